package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/respids"
	"github.com/relaygate/relaygate/service/internal/route"
)

// The Responses API is stateful on the upstream: a response is stored where
// it was made (for the upstream's retention, unless store: false), and a
// follow-up with previous_response_id, or a GET, DELETE, cancel or
// input_items by its id, works only there. So the gateway remembers which
// upstream created each response id (respids), sends those requests to it
// alone, with retries but never fallback (another upstream would answer
// 404, or worse, start a new conversation without the context), and says
// clearly when that upstream cannot be reached.
//
// Responses are not cached (X-Cache: BYPASS): each answer is a new stored
// object with its own id that later requests refer to; replaying one would
// hand two clients the same id, and a previous_response_id chain depends on
// upstream state that no cache key captures.

// responsesPrefix is the path of the by-id endpoints, followed by the id.
const responsesPrefix = "/v1/responses/"

// byIDRequest is a request about one stored response.
type byIDRequest struct {
	id     string
	method string
	// path is appended to the upstream's base URL, query included.
	path   string
	delete bool
}

// validResponseID accepts ids as OpenAI makes them (resp_ and base-62 or
// hex), and anything of that alphabet an upstream may make: they end up in
// upstream URLs and Redis keys.
func validResponseID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func responseNotFound(id, param string) *apiError {
	what, code := "Response", "response_not_found"
	if param != "" {
		what, code = "Previous response", "previous_response_not_found"
	}
	e := &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Code: code,
		Message: fmt.Sprintf("%s with id '%s' not found: no upstream of this gateway created it, or it was stored with store: false, deleted, or is past its upstream's retention.",
			what, truncate(id, 128))}
	if param != "" {
		e.Param = param
	}
	return e
}

// owner looks up where response id lives. A Redis that cannot be reached
// falls back to this process's own map (counted by the store's OnLocal).
func (x *exchange) owner(id string) (respids.Owner, bool) {
	o, ok, err := x.s.respIDs.Get(x.r.Context(), id)
	if err != nil {
		x.s.log.LogAttrs(x.r.Context(), slog.LevelWarn, "response id look-up: Redis unreachable, used the local map",
			slog.String("request_id", x.rid), slog.String("error", err.Error()))
	}
	return o, ok
}

// pinnedChain is the one link of m's chain that holds response id: a
// follow-up goes there or nowhere.
func (x *exchange) pinnedChain(m *model, id string) (route.Chain, *apiError) {
	o, ok := x.owner(id)
	if !ok {
		return nil, responseNotFound(id, "previous_response_id")
	}
	x.pinned, x.pinnedID = o.Upstream, id
	for i := range m.chain {
		if m.chain[i].Pool == nil {
			if m.chain[i].Upstream.Name == o.Upstream {
				return m.chain[i : i+1], nil
			}
			continue
		}
		// A pool's member: the follow-up goes to that member only.
		for _, t := range m.chain[i].Pool.Members {
			if t.Upstream.Name == o.Upstream {
				return route.Chain{t}, nil
			}
		}
	}
	return nil, errBadRequestParam("previous_response_upstream_not_in_route", fmt.Sprintf(
		"Previous response '%s' lives on upstream %s, which does not serve model %s on this gateway; a follow-up must go to the upstream that holds the response, so use a model routed through %s.",
		id, o.Upstream, m.name, o.Upstream), "previous_response_id")
}

// failPinned answers a request pinned to its response's upstream when that
// upstream could not serve it. The request is not sent elsewhere.
func (x *exchange) failPinned(err error) {
	reason, status, code := "", http.StatusBadGateway, "response_upstream_failed"
	var ex *route.ExhaustedError
	if errors.As(err, &ex) && len(ex.Failures) > 0 {
		f := ex.Failures[len(ex.Failures)-1]
		reason = f.Err.Error()
		// The same answers as an unpinned request's (rateLimited,
		// circuitsOpen), so an SDK's own retry waits usefully here too.
		limited, after := ex.RateLimited()
		open, probeIn := ex.CircuitsOpen()
		switch {
		case limited:
			x.w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(after)))
			status, code = http.StatusTooManyRequests, "rate_limit_exceeded"
		case open:
			x.w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(probeIn)))
			status, code = http.StatusServiceUnavailable, "response_upstream_unavailable"
		case f.Attempts == 0:
			// Disabled: nothing was tried.
			status, code = http.StatusServiceUnavailable, "response_upstream_unavailable"
		case ex.Timeout():
			status, code = http.StatusGatewayTimeout, "response_upstream_timeout"
		}
	} else {
		x.s.log.Error("routing failed", "request_id", x.rid, "error", err.Error())
		reason = "routing failed"
	}
	typ := typeUpstream
	if status == http.StatusTooManyRequests {
		typ = typeRateLimit
	}
	x.fail(&apiError{Status: status, Type: typ, Code: code, Message: fmt.Sprintf(
		"Response %s lives on upstream %s, which could not serve this request: %s. The gateway does not send it to another upstream, which does not hold that response; retry later.",
		x.pinnedID, x.pinned, reason)})
}

// record remembers that the response id came from u, before the client
// can see the id: a follow-up may arrive as soon as it has.
func (x *exchange) record(u *route.Upstream, id string) {
	if put := x.recorder(u, id); put != nil {
		put()
	}
}

// recorder notes id as this exchange's response and returns the write that
// remembers its upstream, or nil when there is nothing to remember. A
// stream runs the write while it holds its lifecycle events and waits for
// it at the commit point, so the Redis round trip overlaps the upstream's
// own time to first content instead of adding to it.
func (x *exchange) recorder(u *route.Upstream, id string) func() {
	if !validResponseID(id) {
		return nil
	}
	x.respID = id // for a response.failed of the gateway's own
	if x.noStore || x.byID != nil {
		return nil
	}
	retention := time.Duration(0)
	if uc, ok := x.st.cfg.Upstream(u.Name); ok {
		retention = uc.ResponseRetention.D()
	}
	if retention <= 0 {
		return nil
	}
	ctx, rid, owner := context.WithoutCancel(x.r.Context()), x.rid, respids.Owner{Upstream: u.Name, Model: x.model}
	store, log := x.s.respIDs, x.s.log
	return func() {
		if err := store.Put(ctx, id, owner, retention); err != nil {
			log.LogAttrs(ctx, slog.LevelWarn, "response id kept in this process only: Redis unreachable",
				slog.String("request_id", rid), slog.String("response_id", id), slog.String("upstream", owner.Upstream), slog.String("error", err.Error()))
		}
	}
}

// responsesUsage reads a Responses usage object (input_tokens,
// output_tokens and their details).
func (x *exchange) responsesUsage(u gjson.Result) {
	in, out := u.Get("input_tokens"), u.Get("output_tokens")
	if !in.Exists() && !out.Exists() {
		return
	}
	// Cached tokens are part of input_tokens, as OpenAI counts them.
	x.cacheRead = int(min(max(u.Get("input_tokens_details.cached_tokens").Int(), 0), max(in.Int(), 0)))
	x.setUsage(in.Int(), out.Int(), u.Get("output_tokens_details.reasoning_tokens").Int())
}

// serveResponseByID serves GET and DELETE /v1/responses/{id},
// POST /v1/responses/{id}/cancel and GET /v1/responses/{id}/input_items:
// sent to the upstream that created the response, retried there, never
// anywhere else.
func (s *Server) serveResponseByID(w http.ResponseWriter, r *http.Request) {
	x := &exchange{s: s, w: w, r: r, ep: epResponses, api: epResponses.api(), msgUsage: noMessageUsage, start: time.Now(), rid: requestID(r),
		model: metrics.UnknownModel, upstream: metrics.NoUpstream, cacheResult: "BYPASS",
		bodyRead: true} // ServeHTTP dealt with any body: none is read here
	w.Header().Set("X-Request-Id", x.rid)
	s.metrics.Inflight(1)
	defer x.finish()

	id, sub, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, responsesPrefix), "/")
	var allow string
	switch sub {
	case "":
		allow = "GET, DELETE"
	case "cancel":
		allow = "POST"
	case "input_items":
		allow = "GET"
	default:
		x.status = http.StatusNotFound
		s.notFound(w, r)
		return
	}
	if !slices.Contains(strings.Split(allow, ", "), r.Method) {
		x.status = http.StatusMethodNotAllowed
		methodNotAllowed(w, r, allow)
		return
	}
	st := s.acquire()
	defer s.release(st)
	if !x.admit(st) {
		return
	}
	if !validResponseID(id) {
		x.fail(responseNotFound(id, ""))
		return
	}
	o, ok := x.owner(id)
	if !ok {
		x.fail(responseNotFound(id, ""))
		return
	}
	if st.models[o.Model] != nil {
		x.model = o.Model
	}
	x.pinned, x.pinnedID = o.Upstream, id
	var up *route.Upstream
	for _, u := range st.upstreams {
		if u.Name == o.Upstream {
			up = u
		}
	}
	if up == nil {
		x.fail(&apiError{Status: http.StatusBadGateway, Type: typeUpstream, Code: "response_upstream_failed", Message: fmt.Sprintf(
			"Response %s lives on upstream %s, which is no longer in the gateway's configuration.", id, o.Upstream)})
		return
	}
	path := "/responses/" + id
	if sub != "" {
		path += "/" + sub
	}
	q := r.URL.Query()
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	x.byID = &byIDRequest{id: id, method: r.Method, path: path, delete: r.Method == http.MethodDelete}
	x.stream = sub == "" && r.Method == http.MethodGet && q.Get("stream") == "true"

	chain := route.Chain{{Upstream: up}}
	hooks := route.Hooks{Retry: s.metrics.Retry, Attempt: s.recordAttempt}
	out, err := chain.Run(r.Context(), st.policy, hooks, func(ctx context.Context, t *route.Target) route.Attempt {
		return x.attempt(ctx, t, nil, nil)
	})
	x.attempts = out.Attempts
	switch {
	case out.Target != nil:
		if x.byID.delete && x.status == http.StatusOK {
			if err := s.respIDs.Delete(context.WithoutCancel(r.Context()), id); err != nil {
				s.log.Warn("response id not forgotten in Redis", "request_id", x.rid, "response_id", id, "error", err.Error())
			}
		}
	case errors.Is(err, route.ErrClientGone) || x.clientGone:
		x.status, x.errMsg = 499, "client went away"
	case x.committed:
		x.breakStream(err)
	default:
		x.failPinned(err)
	}
}

// isResponsesPath reports whether path is one of the by-id endpoints.
func isResponsesPath(path string) bool {
	return len(path) > len(responsesPrefix) && strings.HasPrefix(path, responsesPrefix)
}

// breakResponsesStream ends a Responses stream that broke after its commit
// point with the format's own response.failed event, then cuts the
// connection (in finish), so no client takes it for a whole response.
func (x *exchange) breakResponsesStream(err error) {
	reason := err.Error()
	var ex *route.ExhaustedError
	if errors.As(err, &ex) && len(ex.Failures) > 0 {
		reason = ex.Failures[len(ex.Failures)-1].Err.Error()
	}
	msg := "The upstream stream broke after it began: " + reason
	b := make([]byte, 0, 256+len(msg))
	b = append(b, "event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":"...)
	b = strconv.AppendInt(b, x.lastSeq+1, 10)
	b = append(b, `,"response":{"id":`...)
	b = append(b, jsonString(x.respID)...)
	b = append(b, `,"object":"response","status":"failed","model":`...)
	b = append(b, jsonString(x.model)...)
	b = append(b, `,"output":[],"error":{"code":"server_error","message":`...)
	b = append(b, jsonString(msg)...)
	b = append(b, "}}}\n\n"...)
	_, _ = x.w.Write(b)
	_ = http.NewResponseController(x.w).Flush()
	x.errMsg = reason
	x.status = http.StatusBadGateway
	x.abort = true
}
