// Package upstreamsim is an offline simulator of an OpenAI-compatible model
// API, with faults that can be dialled in. It is the gateway's upstream in
// tests, in `make demo` when no real provider key is set, and in benchmarks.
//
// Answers are synthetic: the content is a deterministic function of the model
// and the messages (words drawn from a fixed vocabulary), so the same request
// always gets the same content, while ids differ per answer as a provider's
// do. Latency, jitter, error statuses, hangs, connection resets and cut
// streams are drawn per request from a seeded generator.
//
// Latency and faults apply to chat completions, embeddings, Messages
// (messages.go), Responses API requests (responses.go, the by-id ones
// included) and the rest of OpenAI's surface (surface.go: legacy
// completions, moderations, images, speech, transcriptions), the requests
// a gateway retries and falls back on. /v1/models answers at once, and the
// /sim/ endpoints (stats and reset) are never delayed, faulted or
// authenticated.
package upstreamsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tidwall/gjson"

	"github.com/relaygate/relaygate/internal/ctxsleep"
)

// maxBodyBytes bounds a request body; larger ones get 413, as from a provider.
const maxBodyBytes = 32 << 20

// Server simulates an OpenAI-compatible API. It is an http.Handler; create it
// with New. All methods are safe for concurrent use.
type Server struct {
	cfg     atomic.Pointer[settings]
	seq     atomic.Uint64 // request sequence, mixed with Config.Seed per request
	stats   counters
	pcache  promptCache // Messages' prompt cache (messages.go)
	started int64       // Unix seconds, the "created" time of the listed models
	// responses holds stored Responses API responses (responses.go).
	responses responseStore
	// routes are the model endpoints by path without /v1: gateways differ
	// in whether their base URL carries it.
	routes map[string]route
	// vllm is the vLLM server's state and metrics (Config.VLLM).
	vllm *vllm
}

// New returns a simulator configured by cfg.
func New(cfg Config) *Server {
	s := &Server{started: time.Now().Unix(), vllm: newVLLM(cfg.LoadTime)}
	s.SetConfig(cfg)
	count := func(path string, c *atomic.Uint64, serve http.HandlerFunc) {
		s.routes[path] = route{c, serve}
	}
	s.routes = map[string]route{}
	count("/chat/completions", &s.stats.chat, s.serveChat)
	count("/embeddings", &s.stats.embeddings, s.serveEmbeddings)
	count("/messages", &s.stats.messages, func(w http.ResponseWriter, r *http.Request) { s.serveMessages(w, r, false) })
	count("/messages/count_tokens", &s.stats.countTokens, func(w http.ResponseWriter, r *http.Request) { s.serveMessages(w, r, true) })
	count("/responses", &s.stats.responses, s.serveResponses)
	count("/completions", &s.stats.completions, s.serveCompletions)
	count("/moderations", &s.stats.moderations, s.serveModerations)
	count("/images/generations", &s.stats.images, s.serveImages)
	count("/audio/speech", &s.stats.speech, s.serveSpeech)
	count("/audio/transcriptions", &s.stats.transcriptions, s.serveTranscriptions)
	count("/models", &s.stats.models, s.serveModels)
	return s
}

// route is one model endpoint: the counter of its requests and its handler.
type route struct {
	count *atomic.Uint64
	serve http.HandlerFunc
}

// SetConfig replaces the configuration atomically. Each request reads the
// configuration once, when it arrives, so requests in flight finish under the
// old one and later requests see the new one. Tests use it to flip an
// upstream between healthy and failing without restarting it.
func (s *Server) SetConfig(cfg Config) {
	s.cfg.Store(newSettings(cfg, s.started))
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	return s.stats.snapshot()
}

// ServeHTTP routes a request. Model endpoints are served with and without the
// /v1 prefix, since gateways differ in whether their base URL carries it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !isSimPath(r.URL.Path) {
		s.stats.inFlight.Add(1)
		defer s.stats.inFlight.Add(-1)
		if cfg := s.cfg.Load(); cfg.VLLM && s.serveVLLM(w, r, cfg) {
			return
		}
	}
	if rt, ok := s.routes[strings.TrimPrefix(r.URL.Path, "/v1")]; ok {
		rt.count.Add(1)
		rt.serve(w, r)
		return
	}
	switch r.URL.Path {
	case "/sim/stats":
		s.serveStats(w, r)
	case "/sim/reset":
		s.serveReset(w, r)
	case "/sim/state":
		s.serveState(w, r)
	default:
		if rest, ok := strings.CutPrefix(strings.TrimPrefix(r.URL.Path, "/v1"), "/responses/"); ok && rest != "" {
			s.stats.responses.Add(1)
			s.serveResponseByID(w, r, rest)
			return
		}
		s.rejectURL(w, r)
	}
}

// modelRequest is a model request that passed the checks a provider makes
// before doing any work.
type modelRequest struct {
	cfg   *settings
	doc   gjson.Result
	model string
	rng   splitMix
}

// admit checks method, key, body and model, answering the error itself when a
// check fails. Auth comes before the body, as at OpenAI: a client with a
// wrong key learns nothing about its request.
func (s *Server) admit(w http.ResponseWriter, r *http.Request) (modelRequest, bool) {
	cfg := s.cfg.Load()
	if !s.precheck(w, r, cfg) {
		return modelRequest{}, false
	}
	bp := getBuf()
	body, err := readBody(w, r, *bp)
	*bp = body
	defer putBuf(bp)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			s.rejectTooLarge(w)
			return modelRequest{}, false
		}
		if r.Context().Err() != nil {
			// The client went away: nobody is left to read an answer.
			s.stats.cancelled.Add(1)
			return modelRequest{}, false
		}
		s.rejectBadRequest(w, "", "We could not read the body of your request.")
		return modelRequest{}, false
	}
	if !gjson.ValidBytes(body) {
		s.rejectBadRequest(w, "", "We could not parse the JSON body of your request. "+
			"The OpenAI API expects a JSON payload.")
		return modelRequest{}, false
	}
	// ParseBytes copies the body into a string the results point into, so
	// the pooled buffer can go back as soon as this function returns.
	doc := gjson.ParseBytes(body)
	if !doc.IsObject() {
		s.rejectBadRequest(w, "", "The request body must be a JSON object.")
		return modelRequest{}, false
	}
	model := doc.Get("model")
	if model.Type != gjson.String || model.Str == "" {
		s.rejectBadRequest(w, "model", "You must provide a model parameter.")
		return modelRequest{}, false
	}
	if !cfg.knownModel(model.Str) {
		s.rejectUnknownModel(w, model.Str)
		return modelRequest{}, false
	}
	return s.newModelRequest(cfg, doc, model.Str), true
}

// precheck makes the checks that come before a POST body is read: method,
// key (auth comes first, as at OpenAI) and declared size. It answers the
// error itself when one fails.
func (s *Server) precheck(w http.ResponseWriter, r *http.Request, cfg *settings) bool {
	switch {
	case r.Method != http.MethodPost:
		s.rejectMethod(w, r, http.MethodPost, http.MethodPost)
	case !cfg.authorized(r):
		s.rejectUnauthorized(w)
	case r.ContentLength > maxBodyBytes:
		// Refused on the header alone: a client that sent
		// "Expect: 100-continue" never has to upload the body.
		s.rejectTooLarge(w)
	default:
		return true
	}
	return false
}

// newModelRequest starts a request's own draws: each request gets the next
// stream of the seeded generator.
func (s *Server) newModelRequest(cfg *settings, doc gjson.Result, model string) modelRequest {
	return modelRequest{cfg: cfg, doc: doc, model: model, rng: newSplitMix(uint64(cfg.Seed), s.seq.Add(1))}
}

// readBody reads the whole body into buf, growing it as needed.
func readBody(w http.ResponseWriter, r *http.Request, buf []byte) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, maxBodyBytes)
	if n := r.ContentLength; n > 0 && n <= maxBodyBytes {
		// One extra byte lets the final Read see io.EOF without a regrow.
		buf = slices.Grow(buf, int(n)+1)
	}
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, 4<<10)
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return buf, fmt.Errorf("read request body: %w", err)
		}
	}
}

// reject counts a refused request under n and answers it e as an
// invalid_request_error: every refusal goes through here.
func (s *Server) reject(w http.ResponseWriter, n *atomic.Uint64, e apiError) {
	n.Add(1)
	e.typ = "invalid_request_error"
	_ = e.write(w)
}

func (s *Server) rejectBadRequest(w http.ResponseWriter, param, message string) {
	s.reject(w, &s.stats.badRequest, apiError{status: http.StatusBadRequest, param: param, message: message})
}

func (s *Server) rejectTooLarge(w http.ResponseWriter) {
	s.reject(w, &s.stats.tooBig, apiError{status: http.StatusRequestEntityTooLarge,
		message: fmt.Sprintf("Request body exceeds %d bytes.", maxBodyBytes)})
}

func (s *Server) rejectUnauthorized(w http.ResponseWriter) {
	// The message never echoes the key that was sent.
	s.reject(w, &s.stats.unauthorized, apiError{status: http.StatusUnauthorized, code: "invalid_api_key",
		message: "Incorrect API key provided."})
}

// rejectMethod answers 405 with the methods allowed; use, when set, is the
// one the message suggests.
func (s *Server) rejectMethod(w http.ResponseWriter, r *http.Request, allow, use string) {
	message := fmt.Sprintf("Method %s not allowed for %s", r.Method, r.URL.Path)
	if use != "" {
		message += "; use " + use
	}
	w.Header().Set("Allow", allow)
	s.reject(w, &s.stats.notAllowed, apiError{status: http.StatusMethodNotAllowed, message: message})
}

func (s *Server) rejectUnknownModel(w http.ResponseWriter, model string) {
	s.reject(w, &s.stats.modelNotFound, apiError{status: http.StatusNotFound, code: "model_not_found", param: "model",
		message: fmt.Sprintf("The model `%s` does not exist or you do not have access to it.", model)})
}

// rejectURL answers a path the simulator does not serve.
func (s *Server) rejectURL(w http.ResponseWriter, r *http.Request) {
	s.reject(w, &s.stats.other, apiError{status: http.StatusNotFound,
		message: fmt.Sprintf("Invalid URL (%s %s)", r.Method, r.URL.Path)})
}

// answer sends a complete JSON body with status 200 and reports whether
// it was written; a failed write means the client went away.
func (s *Server) answer(w http.ResponseWriter, body []byte) bool {
	if err := writeJSON(w, http.StatusOK, body); err != nil {
		s.stats.cancelled.Add(1)
		return false
	}
	return true
}

// simulate waits the configured latency, then injects a reset, hang or
// failure when drawn. It reports whether the caller should go on to answer;
// when it returns false the request has been dealt with (and counted).
func (s *Server) simulate(w http.ResponseWriter, r *http.Request, req *modelRequest) bool {
	cfg := req.cfg
	ctx := r.Context()
	wait := cfg.Latency + req.rng.duration(cfg.Jitter)
	if wait < cfg.Latency { // overflowed: both were set near forever
		wait = math.MaxInt64
	}
	if !ctxsleep.Sleep(ctx, wait) {
		s.abandon(w)
		return false
	}
	switch {
	case hits(&req.rng, cfg.ResetRate):
		s.stats.faultReset.Add(1)
		dropConnection(w, true)
		return false
	case hits(&req.rng, cfg.HangRate):
		s.stats.faultHang.Add(1)
		<-ctx.Done()
		s.abandon(w)
		return false
	case hits(&req.rng, cfg.FailureRate):
		s.stats.faultFailure.Add(1)
		status := cfg.FailureStatuses[req.rng.intn(len(cfg.FailureStatuses))]
		if status == http.StatusTooManyRequests && cfg.retryAfter != nil {
			h := w.Header()
			h["Retry-After"] = cfg.retryAfter
			// OpenAI's own clients prefer this one: it allows sub-second waits.
			h["Retry-After-Ms"] = cfg.retryAfterM
		}
		if err := failureError(status).write(w); err != nil {
			s.stats.cancelled.Add(1)
		}
		return false
	}
	return true
}

// abandon ends a request whose context is done. Usually the client has gone
// and this only counts it; but when the server shuts down the client may
// still be there, and returning normally would answer it an empty 200, so
// the connection is dropped instead.
func (s *Server) abandon(w http.ResponseWriter) {
	s.stats.cancelled.Add(1)
	dropConnection(w, false)
}

// hits draws whether a fault with the given rate happens to this request.
// A zero rate draws nothing, so enabling one fault does not shift the draws
// of the others more than needed.
func hits(rng *splitMix, rate float64) bool {
	return rate > 0 && rng.float() < rate
}

func (s *Server) serveModels(w http.ResponseWriter, r *http.Request) {
	cfg := s.cfg.Load()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.rejectMethod(w, r, "GET, HEAD", http.MethodGet)
		return
	}
	if !cfg.authorized(r) {
		s.rejectUnauthorized(w)
		return
	}
	_ = writeJSON(w, http.StatusOK, cfg.modelsJSON)
}

func (s *Server) serveStats(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "use GET", http.StatusMethodNotAllowed)
		return
	}
	body, err := json.Marshal(s.Stats())
	if err != nil {
		// Stats is maps of strings to integers and integers: this cannot
		// fail, but an error here must not pass silently as an empty body.
		http.Error(w, "encode stats: "+err.Error(), http.StatusInternalServerError)
		return
	}
	_ = writeJSON(w, http.StatusOK, body)
}

func (s *Server) serveReset(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	s.stats.zero()
	s.pcache.reset()
	w.WriteHeader(http.StatusNoContent)
}
