package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tidwall/gjson"

	"github.com/relaygate/relaygate/service/internal/cache"
	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/route"
)

// maxPooledResponse keeps rare huge answers from pinning pool memory.
// (The limits of whole answers are in budget.go.)
const maxPooledResponse = 1 << 20

// exchange is one client request on its way through the gateway: what the
// log line and the metrics will say about it when it is done.
type exchange struct {
	s     *Server
	st    *state
	w     http.ResponseWriter
	r     *http.Request
	ep    endpoint
	rid   string
	start time.Time

	model, upstream string // metric labels: config names only
	api             string // metric label: the endpoint's API (endpoint.api)
	status          int
	stream          bool
	includeUsage    bool // the client asked for usage in its stream
	cacheResult     string
	attempts        int
	upstreamWait    time.Duration
	ttft            time.Duration
	committed       bool // the response status line has gone out
	answered        bool // an upstream's 2xx answer went out (whole or not)
	clientGone      bool
	bodyRead        bool // the request body was read to its end
	sawDone         bool // a stream's [DONE] reached the client
	abort           bool // cut the connection: a stream broke after its first byte
	errMsg          string
	client          string // opaque id of the client key, for rate limits
	cacheKey        string // set when the answer may be stored
	// keyName and team name a named client key (config keys:) and its
	// team, as metric labels and for the ledger: config names only. Both
	// are empty for keys of the plain client_keys list and without auth.
	keyName, team string
	pol           *keyPolicy // the named key's policy; nil as keyName is empty
	// adm is the named key's admission while it runs beside the upstream
	// call (keys.go); nil when checked before it, or not at all.
	adm *pendingAdmission
	// failures are the upstreams that failed before one answered (or
	// all, when none did), for the ledger's fallback path.
	failures []route.Failure

	price              route.Price
	reference          *route.Price
	prompt, completion int
	reasoning          int // of completion, where the usage says
	usageKnown         bool
	// key is the answering upstream's key, removed from what it sends.
	key    []byte
	keyStr string
	answer answerBuffer // memory of a whole answer (budget.go)
	// What the request could produce, to bound its usage (see usage.go).
	reqBytes        int
	reqBody         []byte
	maxTokens, n    int64
	usageSuspicious bool
	suspectUsage    [2]int64 // prompt, completion as the upstream gave them

	// Messages only (messages.go): the prompt tokens of x.prompt that
	// wrote or read the upstream's prompt cache, the usage reported so
	// far, whether message_stop (its stream's end) reached the client, and
	// whether the upstream's own error event did.
	cacheWrite, cacheRead       int
	msgUsage                    messageUsage
	msgStopped, upstreamErrSent bool

	// Responses API (responses.go): the upstream the request is pinned
	// to and the response id that pins it, a request about one stored
	// response, whether the new response is kept, the id it got, and the
	// stream's last sequence number.
	pinned, pinnedID string
	byID             *byIDRequest
	noStore          bool
	respID           string
	lastSeq          int64
}

func (s *Server) serveProxy(w http.ResponseWriter, r *http.Request, ep endpoint, forceStream bool) {
	x := &exchange{s: s, w: w, r: r, ep: ep, api: ep.api(), start: time.Now(), rid: requestID(r),
		model: metrics.UnknownModel, upstream: metrics.NoUpstream, cacheResult: "BYPASS", msgUsage: noMessageUsage}
	w.Header().Set("X-Request-Id", x.rid)
	s.metrics.Inflight(1)
	defer x.finish()

	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		x.fail(&apiError{Status: http.StatusMethodNotAllowed, Type: typeInvalidRequest, Code: "method_not_allowed",
			Message: "Method " + r.Method + " is not allowed here; use POST."})
		return
	}
	st := s.acquire()
	defer s.release(st)
	if !x.admit(st) {
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(st.cfg.BodyReadTimeout.D()))
	b, err := readBody(r, st.cfg.MaxBodyBytes)
	if err == nil {
		// The whole body is in: what is read next is net/http's watch
		// for the client going away, which must not time out.
		x.bodyRead = true
		_ = rc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		if errors.Is(err, errTooLarge) {
			x.fail(&apiError{Status: http.StatusRequestEntityTooLarge, Type: typeInvalidRequest, Code: "request_too_large",
				Message: fmt.Sprintf("The request body is larger than the gateway's limit of %d bytes.", st.cfg.MaxBodyBytes)})
			return
		}
		x.fail(errBadRequest("unreadable_body", "The request body could not be read: "+err.Error()))
		return
	}
	var req request
	var e *apiError
	if ep == epTranscriptions {
		req, e = parseForm(b, r.Header.Get("Content-Type"))
	} else {
		req, e = parseRequest(b, ep)
	}
	if e != nil {
		x.fail(e)
		return
	}
	m := st.models[req.model]
	if m == nil {
		x.fail(&apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Code: "model_not_found",
			Message: fmt.Sprintf("The model %q does not exist on this gateway; GET /v1/models lists the models it serves.", truncate(req.model, 100))})
		return
	}
	x.model, x.reference = m.name, m.reference
	chain := m.chainFor(x.api)
	if chain == nil {
		x.fail(m.notServedFor(x.api))
		return
	}
	if x.pol != nil && !x.enforceKey(m.name) {
		return
	}
	defer x.settleAdmission()
	x.stream = ep.streams() && (forceStream || req.stream)
	x.includeUsage = req.includeUsage
	x.reqBytes, x.reqBody, x.maxTokens, x.n = len(b), b, req.maxTokens, req.choices
	if x.fromCache(b, &req) {
		return
	}
	w.Header()["X-Cache"] = cacheHeaderValue(x.cacheResult)

	if ep == epResponses {
		x.noStore = req.noStore
		if req.previousID != "" {
			if chain, e = x.pinnedChain(m, req.previousID); e != nil {
				x.fail(e)
				return
			}
		}
	}
	hooks := route.Hooks{Retry: s.metrics.Retry, Fallback: s.metrics.Fallback, Attempt: s.recordAttempt}
	out, err := chain.Run(x.upstreamContext(), st.policy, hooks, func(ctx context.Context, t *route.Target) route.Attempt {
		return x.attempt(ctx, t, b, &req)
	})
	x.attempts, x.failures = out.Attempts, out.Failures
	if out.Target != nil {
		return
	}
	var ex *route.ExhaustedError
	switch {
	case errors.Is(err, route.ErrClientGone) || x.clientGone:
		x.status, x.errMsg = 499, "client went away"
	case x.committed:
		x.breakStream(err)
	case x.pinned != "":
		x.failPinned(err)
	case errors.As(err, &ex):
		status, code := http.StatusBadGateway, "upstream_failed"
		msg := fmt.Sprintf("Model %s could not be served: %s.", m.name, ex.Error())
		if failedWith[errBufferBusy](ex) {
			// Not the upstream's fault, nor the client's: the gateway is
			// short of memory for a moment, and says when to come back.
			x.w.Header().Set("Retry-After", "1")
			x.fail(&apiError{Status: http.StatusServiceUnavailable, Type: typeServer, Code: "gateway_busy",
				Message: fmt.Sprintf("Model %s could not be served now: %s. Retry shortly.", m.name, ex.Error())})
			return
		}
		switch refused, billing := refusedBy(ex); {
		case len(refused) > 0:
			// Whatever else failed, a refused key is what someone has to
			// fix, and it is the operator's configuration, not the client's.
			code = "upstream_auth_failed"
			msg = refusalMessage(refused, "refused the gateway's credentials", "api_key") + " " + msg
		case len(billing) > 0:
			code = "upstream_payment_required"
			msg = refusalMessage(billing, "refused the gateway's account for billing (HTTP 402)", "account's credit or plan") + " " + msg
		case x.rateLimited(m, ex):
			return
		case x.circuitsOpen(m, ex):
			return
		case notServed(ex):
			// Every upstream that answered said it has no such model: the
			// client hears what it would have heard from the upstream.
			status, code = http.StatusNotFound, "model_not_found"
			x.fail(&apiError{Status: status, Type: typeInvalidRequest, Code: code,
				Message: fmt.Sprintf("Model %s is not available from its upstreams: %s.", m.name, ex.Error())})
			return
		case ex.Timeout():
			status, code = http.StatusGatewayTimeout, "upstream_timeout"
		case failedWith[*errAnswerTooLarge](ex):
			code = "upstream_answer_too_large"
		}
		x.fail(&apiError{Status: status, Type: typeUpstream, Code: code, Message: msg})
	default:
		// Run fails only as above; whatever this is, its text is not for
		// the client.
		s.log.Error("routing failed", "request_id", x.rid, "error", err.Error())
		x.fail(&apiError{Status: http.StatusBadGateway, Type: typeUpstream, Code: "upstream_failed",
			Message: fmt.Sprintf("Model %s could not be served.", m.name)})
	}
}

// rateLimited answers 429 when every upstream asked answered 429: that is
// the provider's quota, which clients' SDKs wait out and retry, not an
// outage. Retry-After is the shortest an upstream gave (1s when none did),
// so the client comes back when the first of them may take it.
func (x *exchange) rateLimited(m *model, ex *route.ExhaustedError) bool {
	ok, after := ex.RateLimited()
	if !ok {
		return false
	}
	secs := retryAfterSeconds(after)
	x.w.Header().Set("Retry-After", strconv.Itoa(secs))
	x.fail(&apiError{Status: http.StatusTooManyRequests, Type: typeRateLimit, Code: "rate_limit_exceeded",
		Message: fmt.Sprintf("Model %s is rate limited by its upstreams; retry after %ds: %s.", m.name, secs, ex.Error())})
	return true
}

// circuitsOpen answers 503 when no upstream was asked because every
// breaker is open, with Retry-After the time until the first of them lets
// a probe through: an SDK's own retry then arrives when one may succeed.
func (x *exchange) circuitsOpen(m *model, ex *route.ExhaustedError) bool {
	ok, in := ex.CircuitsOpen()
	if !ok {
		return false
	}
	secs := retryAfterSeconds(in)
	x.w.Header().Set("Retry-After", strconv.Itoa(secs))
	x.fail(&apiError{Status: http.StatusServiceUnavailable, Type: typeServer, Code: "upstreams_unavailable",
		Message: fmt.Sprintf("Model %s cannot be served now: the circuit of every upstream is open after repeated failures; the next probe is in %ds: %s.", m.name, secs, ex.Error())})
	return true
}

// retryAfterSeconds is d as a Retry-After in whole seconds, rounded up, at
// least 1 (0 would invite a retry storm) and at most a day.
func retryAfterSeconds(d time.Duration) int {
	secs := int((min(d, 24*time.Hour) + time.Second - 1) / time.Second)
	return max(secs, 1)
}

// failedWith reports whether an upstream of an exhausted chain failed with
// an error of type E.
func failedWith[E error](ex *route.ExhaustedError) bool {
	for _, f := range ex.Failures {
		var e E
		if errors.As(f.Err, &e) {
			return true
		}
	}
	return false
}

// errUpstreamRefused is an upstream's 401, 402 or 403 to the gateway's own
// account. It holds nothing of the upstream's answer, which may quote the
// key.
type errUpstreamRefused struct{ code int }

func (e *errUpstreamRefused) Error() string {
	if e.code == http.StatusPaymentRequired {
		return "refused the gateway's account for billing (HTTP 402: out of credit, or over its plan)"
	}
	return fmt.Sprintf("refused the gateway's credentials (HTTP %d)", e.code)
}

// errUpstreamNotFound is an upstream's 404 for a model the gateway serves.
type errUpstreamNotFound struct{ msg string }

func (e *errUpstreamNotFound) Error() string { return "HTTP 404" + e.msg }

// refusedBy names the upstreams of an exhausted chain that refused the
// gateway's key, and those that refused its account for billing.
func refusedBy(ex *route.ExhaustedError) (auth, billing []string) {
	for _, f := range ex.Failures {
		var r *errUpstreamRefused
		switch {
		case !errors.As(f.Err, &r):
		case r.code == http.StatusPaymentRequired:
			billing = append(billing, f.Upstream)
		default:
			auth = append(auth, f.Upstream)
		}
	}
	return auth, billing
}

// notServed reports whether every upstream of an exhausted chain that was
// asked answered 404, none failing otherwise.
func notServed(ex *route.ExhaustedError) bool {
	asked := 0
	for _, f := range ex.Failures {
		if f.Attempts == 0 {
			continue // disabled, or its circuit open: it said nothing
		}
		asked++
		var nf *errUpstreamNotFound
		if !errors.As(f.Err, &nf) {
			return false
		}
	}
	return asked > 0
}

func refusalMessage(names []string, what, fix string) string {
	if len(names) == 1 {
		return fmt.Sprintf("Upstream %s %s; the operator must fix that upstream's %s.", names[0], what, fix)
	}
	return fmt.Sprintf("Upstreams %s %s; the operator must fix those upstreams' %s.", strings.Join(names, ", "), what, fix)
}

func (s *Server) recordAttempt(upstream string, a route.Attempt) {
	switch {
	case a.Err == nil:
		s.metrics.UpstreamAttempt(upstream, "success")
	case a.Timeout:
		s.metrics.UpstreamAttempt(upstream, "timeout")
	default:
		s.metrics.UpstreamAttempt(upstream, "error")
	}
}

// Header values shared by every response.
var (
	hdrJSON        = []string{"application/json"}
	hdrEventStream = []string{"text/event-stream"}
	hdrAny         = []string{"*/*"}
	hdrUserAgent   = []string{"relaygate"}
	hdrCache       = map[string][]string{"HIT": {"HIT"}, "MISS": {"MISS"}, "BYPASS": {"BYPASS"}}
)

func cacheHeaderValue(result string) []string {
	if v, ok := hdrCache[result]; ok {
		return v
	}
	return []string{result}
}

// admit runs the exchange on st if its client key is valid and within its
// rate limits; otherwise the client has been answered.
func (x *exchange) admit(st *state) bool {
	x.st = st
	client, pol, e := st.authorize(x.r, x.ep)
	if e != nil {
		// A client without a valid key gets nothing more from this
		// connection: not its body read, nor an idle keep-alive slot.
		x.w.Header()["Connection"] = hdrClose
		x.fail(e)
		return false
	}
	x.client = client
	if pol != nil {
		x.pol, x.keyName, x.team = pol, pol.name, pol.team
	}
	return x.allow()
}

// fail answers the client with e and remembers it for the log line.
func (x *exchange) fail(e *apiError) {
	x.status, x.errMsg = e.Status, e.Message
	if !x.bodyRead {
		// Refused before its body was read (no key, rate limited, too
		// large, or the body stalled past body_read_timeout).
		unreadBody(x.w, x.r)
	}
	x.closeIfDraining()
	x.ep.errorFormat().write(x.w, e)
	x.committed = true
}

// writeHeader sends the answer's status line and headers.
func (x *exchange) writeHeader(code int) {
	x.closeIfDraining()
	x.w.WriteHeader(code)
}

// closeIfDraining asks the client to close its connection after this
// answer when a drain began while the request ran (ServeHTTP only sees
// the requests that start after it): its client then does not send its
// next request on a connection the drain is about to close.
func (x *exchange) closeIfDraining() {
	if x.s.draining.Load() {
		x.w.Header()["Connection"] = hdrClose
	}
}

// attempt sends the request to one upstream and, when it answers well,
// relays the answer to the client.
func (x *exchange) attempt(ctx context.Context, t *route.Target, b []byte, req *request) route.Attempt {
	u := t.Upstream
	method, path := http.MethodPost, x.ep.upstreamPath()
	var data []byte
	var form func() io.ReadCloser
	var formLen int64
	usageAdded := false
	switch {
	case x.ep == epChat || x.ep == epCompletions:
		data, usageAdded = upstreamBody(b, req, t.Model, x.stream)
	case x.ep == epTranscriptions:
		form, formLen = formBody(b, req, t.Model)
	case x.byID != nil:
		method, path = x.byID.method, x.byID.path
	default:
		// Only renamed: Responses streams carry usage in their last
		// event, embeddings do not stream.
		data, _ = upstreamBody(b, req, t.Model, false)
	}
	actx, cancel := context.WithTimeout(ctx, u.Timeout)
	defer cancel()

	hreq, err := http.NewRequestWithContext(actx, method, u.BaseURL+path, nil)
	if err != nil {
		return route.Attempt{Err: fmt.Errorf("building request: %w", err)}
	}
	ctype, accept := hdrJSON, hdrJSON
	switch {
	case data != nil:
		hreq.Body = bodyReader(data)
		hreq.ContentLength = int64(len(data))
		hreq.GetBody = func() (io.ReadCloser, error) { return bodyReader(data), nil }
	case form != nil:
		hreq.Body, hreq.ContentLength = form(), formLen
		hreq.GetBody = func() (io.ReadCloser, error) { return form(), nil }
		ctype = []string{req.formType}
	}
	switch {
	case x.stream:
		accept = hdrEventStream
	case !x.ep.jsonAnswer():
		accept = hdrAny // audio, or text, SRT, VTT
	}
	hreq.Header = http.Header{
		"Content-Type": ctype,
		"Accept":       accept,
		"User-Agent":   hdrUserAgent,
		"X-Request-Id": {x.rid},
	}
	if a, ok := x.st.authHeader[u]; ok {
		hreq.Header[a.name] = a.value
	}
	if x.ep.errorFormat() == formatAnthropic {
		x.anthropicHeaders(hreq.Header)
	}

	key := x.st.upstreamKey[u]
	keyStr := x.st.upstreamKeyStr[u]
	t0 := time.Now()
	resp, err := u.Transport.RoundTrip(hreq)
	if err != nil {
		x.waited(u, t0)
		return x.transportFailure(ctx, actx, u, err)
	}
	defer resp.Body.Close()
	x.key, x.keyStr = key, keyStr

	code := resp.StatusCode
	switch {
	case code == http.StatusOK && x.stream && isEventStream(resp.Header.Get("Content-Type")):
		x.price = t.Price
		if x.ep == epResponses {
			return x.relayResponsesStream(ctx, actx, cancel, u, resp, t0)
		}
		return x.relayStream(ctx, actx, cancel, u, resp, t0, usageAdded)
	case code >= 200 && code < 300:
		x.price = t.Price
		return x.relayWhole(ctx, actx, u, resp, t0)
	case route.RetryableStatus(code) || code < 200 || (code >= 300 && code < 400):
		msg := upstreamErrorMessage(resp.Body, keyStr)
		x.waited(u, t0)
		return route.Attempt{
			Err:         fmt.Errorf("HTTP %d%s", code, msg),
			Retryable:   true,
			Timeout:     code == http.StatusGatewayTimeout || code == http.StatusRequestTimeout,
			RetryAfter:  route.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
			RateLimited: code == http.StatusTooManyRequests,
		}
	case code == http.StatusUnauthorized || code == http.StatusForbidden || code == http.StatusPaymentRequired:
		// The client's key was fine; the gateway's own account with this
		// upstream was refused (a revoked or mistyped key, or, with 402,
		// no credit left). Another try here would be refused the same
		// way, but the next upstream has its own account, so the chain
		// moves on. Should every upstream refuse, the client gets a 502:
		// passing a 401 or 402 on would tell it that its own key or bill
		// is at fault. The body is read only so the connection can be
		// reused, and dropped: it may echo our key.
		_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
		x.waited(u, t0)
		return route.Attempt{Err: &errUpstreamRefused{code: code}, Fallback: true}
	case code == http.StatusNotFound && x.pinned != "":
		// The upstream holding the response says it has no such
		// response (deleted, expired): its word is final.
		return x.relayWhole(ctx, actx, u, resp, t0)
	case code == http.StatusNotFound:
		// The gateway serves the model, so a 404 means this upstream does
		// not (a relay without it, a base_url missing its /v1); the next
		// upstream may. The upstream itself is up.
		msg := upstreamErrorMessage(resp.Body, keyStr)
		x.waited(u, t0)
		return route.Attempt{Err: &errUpstreamNotFound{msg: msg}, Fallback: true, Healthy: true}
	default:
		// The request itself is wrong (400, 413, 422 …): every upstream
		// would say the same, so the answer goes back as it is.
		return x.relayWhole(ctx, actx, u, resp, t0)
	}
}

// waited adds the time since t0 to the exchange's upstream wait and to the
// upstream's latency histogram.
func (x *exchange) waited(u *route.Upstream, t0 time.Time) {
	d := time.Since(t0)
	x.upstreamWait += d
	x.s.metrics.UpstreamDuration(u.Name, d.Seconds())
}

func (x *exchange) transportFailure(ctx, actx context.Context, u *route.Upstream, err error) route.Attempt {
	switch {
	case ctx.Err() != nil:
		return route.Attempt{Err: err}
	case errors.Is(actx.Err(), context.DeadlineExceeded):
		return route.Attempt{Err: fmt.Errorf("no answer within timeout %s", u.Timeout), Retryable: true, Timeout: true}
	}
	var ne net.Error
	timeout := errors.As(err, &ne) && ne.Timeout()
	return route.Attempt{Err: x.fault(u, err, beforeAnswer), Retryable: true, Timeout: timeout}
}

// fault describes a transport error for the client and /health, and logs
// Go's own text of it (addresses and all) for the operator.
func (x *exchange) fault(u *route.Upstream, err error, when string) error {
	f := describeTransport(err, when)
	x.s.log.LogAttrs(x.r.Context(), slog.LevelInfo, "upstream connection failed",
		slog.String("request_id", x.rid), slog.String("upstream", u.Name), slog.String("error", f.msg),
		slog.String("detail", scrubErrorText(err.Error(), x.st.upstreamKeyStr[u], 0, false)))
	return f
}

var respBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}

// answerLimit is the most bytes one whole answer to this endpoint may
// have; below the budget, which an answer must fit in.
func (x *exchange) answerLimit() int {
	limit := int64(maxChatAnswerBytes)
	if x.ep == epEmbeddings {
		limit = maxEmbeddingsAnswerBytes
	}
	return int(min(limit, x.st.budget.size-1))
}

// relayWhole reads a whole answer before sending any of it: a connection
// that breaks mid-body can then still be retried or fall back, and the
// client gets one write with a Content-Length.
//
// Its memory comes from the process-wide budget (budget.go): an answer
// announced larger than its endpoint's limit is refused before a byte of
// it is read, one that finds the budget taken waits a little, then fails
// with a 503.
func (x *exchange) relayWhole(ctx, actx context.Context, u *route.Upstream, resp *http.Response, t0 time.Time) route.Attempt {
	limit := x.answerLimit()
	if resp.ContentLength > int64(limit) {
		x.waited(u, t0)
		return route.Attempt{Err: &errAnswerTooLarge{limit: limit}}
	}
	ab := &x.answer
	err := ab.init(ctx, actx, x.st.budget, resp.ContentLength)
	if err == nil {
		defer ab.release()
		var data []byte
		data, err = ab.readFrom(ctx, actx, resp.Body, limit)
		if err == nil {
			x.waited(u, t0)
			return x.answerWhole(u, resp, data)
		}
	}
	x.waited(u, t0)
	switch {
	case ctx.Err() != nil:
		return route.Attempt{Err: err}
	case errors.As(err, new(errBufferBusy)):
		return route.Attempt{Err: err}
	case errors.Is(actx.Err(), context.DeadlineExceeded):
		return route.Attempt{Err: fmt.Errorf("answer not complete within timeout %s", u.Timeout), Retryable: true, Timeout: true}
	case errors.Is(err, errTooLarge):
		return route.Attempt{Err: &errAnswerTooLarge{limit: limit}}
	}
	return route.Attempt{Err: x.fault(u, err, midAnswer), Retryable: true}
}

// answerWhole sends the client an answer read whole, less the upstream's
// key should it quote it, and caches it when it may.
func (x *exchange) answerWhole(u *route.Upstream, resp *http.Response, data []byte) route.Attempt {
	ct := resp.Header.Get("Content-Type")
	if hasKeyPiece(ct, x.keyStr) {
		ct = "application/octet-stream"
	}
	if resp.StatusCode < 300 {
		data = redactAnswer(data, x.key)
		if x.byID == nil && x.ep.jsonAnswer() {
			x.readUsage(data)
		}
		if x.stream {
			return x.replayAsStream(u, resp, data)
		}
		if x.ep == epResponses {
			x.record(u, gjson.GetBytes(data, "id").Str)
		}
	} else {
		data, ct = clientErrorBody(u, x.keyStr, resp.StatusCode, data, ct, x.ep.errorFormat())
	}
	cacheable := resp.StatusCode == http.StatusOK && x.cacheKey != "" && cacheableAnswer(x.ep, ct, data)
	h := x.w.Header()
	switch ct {
	case "", "application/json":
		ct = "application/json"
		h["Content-Type"] = hdrJSON
	default:
		h.Set("Content-Type", ct)
	}
	h["Content-Length"] = []string{strconv.Itoa(len(data))}
	x.setUpstreamHeaders(u, resp)
	x.writeHeader(resp.StatusCode)
	x.status, x.upstream, x.committed = resp.StatusCode, u.Name, true
	x.answered = resp.StatusCode < 300
	if err := x.writeAll(data); err != nil {
		x.clientGone = true
		return route.Attempt{}
	}
	if cacheable {
		x.store(data, ct, u.Name)
	}
	return route.Attempt{}
}

// clientWriteChunk is how much of an answer one write deadline covers.
const clientWriteChunk = 64 << 10

// writeAll writes a whole answer to the client, giving it
// stream_idle_timeout to take each piece of it. A client that stops reading,
// or vanished without closing its connection, would otherwise hold the
// handler, its buffers and a count in relaygate_inflight_requests until the
// kernel gives up on it: minutes, or never for a client that keeps its
// receive window shut. The last deadline stays set for what net/http
// writes after the handler returns (ServeHTTP clears it for the next
// request on the connection); nothing is flushed here, so the answer's
// last bytes still leave after the request has been counted.
func (x *exchange) writeAll(b []byte) error {
	idle := x.st.cfg.StreamIdleTimeout.D()
	for len(b) > 0 {
		n := min(len(b), clientWriteChunk)
		setWriteDeadline(x.w, time.Now().Add(idle))
		if _, err := x.w.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// writeDeadliner is net/http's own ResponseWriter. A ResponseController
// would find it too, but costs an allocation per request.
type writeDeadliner interface{ SetWriteDeadline(time.Time) error }

func setWriteDeadline(w http.ResponseWriter, t time.Time) {
	if d, ok := w.(writeDeadliner); ok {
		_ = d.SetWriteDeadline(t)
	}
}

// replayAsStream answers a stream request that the upstream answered with
// a whole chat.completion (some servers ignore "stream"): the client's SDK
// expects events, so it gets the answer as events, as from the cache.
// Anything else is a failure of this upstream, and the next one is tried.
func (x *exchange) replayAsStream(u *route.Upstream, resp *http.Response, data []byte) route.Attempt {
	if x.ep != epChat {
		return route.Attempt{Err: errors.New("answered a stream request with a whole answer, not events"), Fallback: true}
	}
	events, err := cache.StreamReplay(data, x.includeUsage)
	if err != nil {
		// The parser's own words (offsets, Go's messages) are no use to
		// the client, and the body is the upstream's to quote.
		what := "a whole answer that is not a chat.completion"
		if !gjson.ValidBytes(data) {
			what = "invalid JSON from upstream"
		}
		x.s.log.Info("upstream answered a stream request with a whole answer that cannot be replayed", "request_id", x.rid,
			"upstream", u.Name, "error", scrubErrorText(err.Error(), x.keyStr, errorTextLimit, false))
		return route.Attempt{Err: fmt.Errorf("answered a stream request with %s, not events", what), Fallback: true}
	}
	h := x.w.Header()
	h["Content-Type"] = hdrEventStream
	h.Set("Cache-Control", "no-cache")
	h["Content-Length"] = []string{strconv.Itoa(len(events))}
	x.setUpstreamHeaders(u, resp)
	x.writeHeader(http.StatusOK)
	x.status, x.upstream, x.committed, x.answered = http.StatusOK, u.Name, true, true
	x.ttft = time.Since(x.start)
	if err := x.writeAll(events); err != nil {
		x.clientGone = true
		return route.Attempt{}
	}
	x.sawDone = true
	return route.Attempt{}
}

// clientErrorBody is what the client gets of an upstream's refusal of the
// request itself (400, 413, 422 …): the upstream's own OpenAI-shaped error,
// less the gateway's key should it echo it, or, for anything else (an HTML
// page from a proxy in front of it), the gist in OpenAI's shape, which
// clients' SDKs can parse.
func clientErrorBody(u *route.Upstream, key string, code int, data []byte, ct string, f errorFormat) ([]byte, string) {
	if f == formatAnthropic && !anthropicShaped(data) {
		// An OpenAI-shaped (or any other) refusal, told in the shape the
		// client's Anthropic SDK parses.
		return append(anthropicErrorBody(code, upstreamRefusal(u, key, code, data)), '\n'), "application/json"
	}
	if gjson.GetBytes(data, "error").IsObject() {
		if len(key) < minKeyForErrors || (!bytes.Contains(data, []byte(key)) && len(data) > maxFragmentScan) {
			return data, ct
		}
		// Pieces of the key go too; the text stays valid JSON, since
		// what replaces them holds no quote or backslash.
		s := strings.ReplaceAll(string(data), key, redacted)
		if len(s) <= maxFragmentScan {
			s = redactKeyRuns(s, key)
		}
		return []byte(s), ct
	}
	body, _ := json.Marshal(struct {
		Error *apiError `json:"error"`
	}{&apiError{Type: typeInvalidRequest, Code: "upstream_rejected_request", Message: upstreamRefusal(u, key, code, data)}})
	return append(body, '\n'), "application/json"
}

// upstreamRefusal words an upstream's refusal for the client: its
// error.message when it has one, else the start of its body, less the key.
func upstreamRefusal(u *route.Upstream, key string, code int, data []byte) string {
	gist := gjson.GetBytes(data, "error.message").Str
	if gist == "" {
		// Only the start is shown: a long page is not copied whole to be cut.
		head := data[:min(len(data), 4*errorTextLimit)]
		gist = strings.TrimSpace(scrubErrorText(string(head), key, errorTextLimit, len(head) < len(data)))
	} else {
		gist = scrubErrorText(gist, key, errorTextLimit, false)
	}
	if gist != "" {
		gist = ": " + gist
	}
	return fmt.Sprintf("Upstream %s refused the request with HTTP %d%s", u.Name, code, gist)
}

func (x *exchange) setUpstreamHeaders(u *route.Upstream, resp *http.Response) {
	h := x.w.Header()
	h["X-Relaygate-Upstream"] = x.st.nameHeader[u]
	if id := resp.Header.Get("X-Request-Id"); id != "" && len(id) <= 128 && safeToken(id) && !hasKeyPiece(id, x.keyStr) {
		h.Set("X-Upstream-Request-Id", id)
	}
	// Server-Timing carries the gateway's own time so far and the upstream
	// wait, for debugging one request from the client's side.
	over := time.Since(x.start) - x.upstreamWait
	h.Set("Server-Timing", "relaygate;dur="+strconv.FormatFloat(float64(over)/1e6, 'f', 3, 64)+
		", upstream;dur="+strconv.FormatFloat(float64(x.upstreamWait)/1e6, 'f', 3, 64))
}

// upstreamErrorMessage reads the start of an error body for the failure
// report: OpenAI's error.message when there is one.
//
// The key is removed from the whole of what was read before the message is
// taken from it and cut short: a cut first would leave the key's start.
func upstreamErrorMessage(r io.Reader, key string) string {
	var buf [2048]byte
	n, _ := io.ReadFull(r, buf[:])
	if n == 0 {
		return ""
	}
	body := scrubErrorText(string(buf[:n]), key, 0, n == len(buf))
	msg := gjson.Get(body, "error.message").String()
	if msg == "" {
		return ""
	}
	return ": " + scrubErrorText(msg, key, errorTextLimit, false)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// finish records the request in metrics and the log once it is over.
func (x *exchange) finish() {
	s := x.s
	d := time.Since(x.start)
	s.metrics.Inflight(-1)
	if x.status == 0 {
		x.status = 499
	}
	s.metrics.Request(x.model, x.api, x.upstream, x.status, d.Seconds())
	if x.pol != nil {
		x.pol.series.Requests.Inc()
	}
	if x.upstream != metrics.NoUpstream {
		s.metrics.Overhead((d - x.upstreamWait).Seconds())
	}
	if x.ttft > 0 {
		s.metrics.TTFT(x.model, x.api, x.ttft.Seconds())
	}
	switch {
	case x.upstream == metrics.CacheUpstream:
		if x.usageKnown {
			saved := x.savedByCache()
			s.metrics.CacheSaving(x.model, saved)
			if x.pol != nil {
				// Free to the key, worth its reference to the report.
				x.pol.series.Reference.Add(saved)
			}
		}
	case x.answered && x.byID == nil:
		// Counted whatever became of the request afterwards: a client
		// that hangs up once it has the answer (before the usage event,
		// or mid-stream) has still been served, and the upstream still
		// bills the tokens. Usage it never reported stays unknown.
		if x.usageSuspicious {
			x.suspicious()
		} else if x.usageKnown {
			cost := x.price.UsageCost(x.billed())
			ref, hasRef := 0.0, x.reference != nil
			if hasRef {
				ref = x.reference.UsageCost(x.billed())
			}
			s.metrics.Usage(x.model, x.api, x.upstream, x.prompt, x.completion, cost, ref, hasRef)
			x.chargeTokens()
			if x.pol != nil {
				x.chargeKey(cost, ref, hasRef)
			}
		} else if x.ep.billsTokens() {
			s.metrics.UsageUnknown(x.model)
		}
	}
	if x.st == nil || *x.st.cfg.Log.Requests || x.status >= 500 {
		level := slog.LevelInfo
		if x.status >= 500 {
			level = slog.LevelWarn
		}
		attrs := []slog.Attr{
			slog.String("request_id", x.rid),
			slog.String("path", x.r.URL.Path),
			slog.String("api", x.api),
			slog.String("model", x.model),
			slog.String("upstream", x.upstream),
			slog.Int("status", x.status),
			slog.Float64("duration_ms", float64(d)/1e6),
			slog.Float64("upstream_ms", float64(x.upstreamWait)/1e6),
			slog.Int("attempts", x.attempts),
			slog.Bool("stream", x.stream),
			slog.String("cache", x.cacheResult),
		}
		if x.usageKnown {
			attrs = append(attrs, slog.Int("prompt_tokens", x.prompt), slog.Int("completion_tokens", x.completion))
			if x.cacheRead > 0 {
				attrs = append(attrs, slog.Int("cached_tokens", x.cacheRead))
			}
		}
		if x.respID != "" || x.pinnedID != "" {
			attrs = append(attrs, slog.String("response_id", x.respID), slog.String("pinned_to", x.pinnedID))
		}
		if x.errMsg != "" {
			attrs = append(attrs, slog.String("error", x.errMsg))
		}
		s.log.LogAttrs(x.r.Context(), level, "request", attrs...)
	}
	x.writeLedger(d)
	if x.abort {
		// Cut the connection without the final chunk, so the client sees
		// a broken stream rather than one that looks complete.
		panic(http.ErrAbortHandler)
	}
}
