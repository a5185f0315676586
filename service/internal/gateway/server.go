// Package gateway is the HTTP face of Relaygate: an OpenAI-compatible API
// that authenticates clients, routes each model through its chain of
// upstreams and relays answers and Server-Sent Events as bytes.
package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/cache"
	"github.com/relaygate/relaygate/service/internal/gpu"
	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/ratelimit"
	"github.com/relaygate/relaygate/service/internal/respids"
	"github.com/relaygate/relaygate/service/internal/route"
)

// Options are the gateway's collaborators. Cache, Limiter and GPU are
// optional: nil turns the feature off.
type Options struct {
	Logger  *slog.Logger
	Metrics *metrics.Metrics
	// Version is reported by /health.
	Version string
	Cache   *cache.Cache
	Limiter *ratelimit.Limiter
	GPU     *gpu.Monitor
	// ResponseIDs remembers which upstream created each Responses API
	// response; nil keeps them in a map of this process only.
	ResponseIDs *respids.Store
	// Ledger takes one row per request answered or refused; nil: no
	// ledger.
	Ledger LedgerWriter
}

// Server is the gateway's http.Handler.
type Server struct {
	log      *slog.Logger
	metrics  *metrics.Metrics
	version  string
	started  time.Time
	state    atomic.Pointer[state]
	draining atomic.Bool
	// upMu orders writes to relaygate_upstream_up: a reload that deletes a
	// removed upstream's series against a breaker callback, from a request
	// still running on the old state, that would set it again.
	upMu sync.Mutex
	// retMu guards retiredStates, the states replaced by a reload that
	// requests still run on, and their dropped pools.
	retMu         sync.Mutex
	retiredStates []*state
	metricsH      http.Handler
	cache         *cache.Cache
	limiter       *ratelimit.Limiter
	gpu           *gpu.Monitor
	respIDs       *respids.Store
	ledger        LedgerWriter
}

// New builds a server for cfg.
func New(cfg *config.Config, opts Options) *Server {
	s := &Server{
		log:     opts.Logger,
		metrics: opts.Metrics,
		version: opts.Version,
		started: time.Now(),
		cache:   opts.Cache,
		limiter: opts.Limiter,
		gpu:     opts.GPU,
		ledger:  opts.Ledger,
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.metrics == nil {
		s.metrics = metrics.New()
	}
	s.respIDs = opts.ResponseIDs
	if s.respIDs == nil {
		// Without Redis: New cannot fail.
		s.respIDs, _ = respids.New(respids.Options{Logger: s.log, OnLocal: s.metrics.ResponseIDLocal})
	}
	s.metricsH = promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelError)})
	s.apply(cfg)
	return s
}

// Reload swaps in a new configuration. Requests in flight finish on the
// config they started with.
func (s *Server) Reload(cfg *config.Config) { s.apply(cfg) }

func (s *Server) apply(cfg *config.Config) {
	prev := s.state.Load()
	st := newState(cfg, prev, s.breakerChanged)
	size := cfg.BufferBudgetBytes
	if size <= 0 {
		size = config.DefaultBufferBudgetBytes
	}
	if prev != nil && prev.budget.size == size {
		st.budget = prev.budget
	} else {
		st.budget = newByteBudget(size, s.metrics.ResponseBuffer)
	}
	for _, m := range st.models {
		for api, chain := range m.chains {
			ups := make([]string, 0, len(chain)+1)
			for _, t := range chain {
				ups = append(ups, t.Upstream.Name)
			}
			s.metrics.Prepare(m.name, api, append(ups, metrics.CacheUpstream))
		}
	}
	s.metrics.SetLatencyBudget(cfg.SLO.LatencyP95.D().Seconds())

	s.upMu.Lock()
	s.state.Store(st)
	if prev != nil {
		// An upstream gone from the config would otherwise keep its last
		// value for ever: a stale 0 keeps the circuit-open alert firing, a
		// stale 1 hides that every real upstream is down.
		kept := make(map[string]bool, len(st.upstreams))
		for _, u := range st.upstreams {
			kept[u.Name] = true
		}
		for _, u := range prev.upstreams {
			if !kept[u.Name] {
				s.metrics.UpstreamRemoved(u.Name)
			}
		}
	}
	for _, u := range st.upstreams {
		s.setUpstreamUp(u)
	}
	s.upMu.Unlock()
	if prev != nil {
		s.retire(prev, st)
	}

	if len(cfg.ClientKeys) == 0 {
		s.log.Warn("client_keys is empty: the gateway is OPEN, anyone who can reach it can spend your upstream credit")
	}
	for _, w := range cfg.Warnings {
		s.log.Warn(w)
	}
}

// breakerChanged is every breaker's OnChange. A breaker outlives the
// state it was made for: requests still running on an older config report
// to it after a reload has removed its upstream, given the name a new
// breaker, or disabled it. Only the breaker the current state uses for that
// name may set the name's up series, or a removed upstream's series would
// come back and an old breaker's state would overwrite the new one's.
func (s *Server) breakerChanged(u *route.Upstream, from, to route.BreakerState) {
	s.metrics.CircuitTransition(u.Name, to.String())
	s.upMu.Lock()
	if st := s.state.Load(); st != nil {
		for _, cur := range st.upstreams {
			if cur.Name == u.Name && cur.Breaker == u.Breaker {
				s.setUpstreamUp(cur)
				break
			}
		}
	}
	s.upMu.Unlock()
	level := slog.LevelWarn
	if to == route.Closed {
		level = slog.LevelInfo
	}
	s.log.Log(context.Background(), level, "circuit breaker", "upstream", u.Name, "from", from.String(), "to", to.String(),
		"last_error", u.Breaker.Status().LastError)
}

// setUpstreamUp exports u's relaygate_upstream_up; s.upMu is held. The
// series follows the breaker's state, 0 while it is open, and not
// Available, which turns true once the cool-down is over so that /ready
// lets traffic in to probe: the up series should not announce a recovery
// that no request has seen yet. It reads the state rather than trusting
// the transition it was told of, since callbacks of two quick transitions
// may arrive in either order.
func (s *Server) setUpstreamUp(u *route.Upstream) {
	if u.Disabled != "" {
		s.metrics.UpstreamDisabled(u.Name)
		return
	}
	s.metrics.UpstreamUp(u.Name, u.Breaker.State() != route.Open)
}

var hdrClose = []string{"close"}

// Drain makes /ready fail so load balancers stop sending new requests,
// while requests in flight go on.
func (s *Server) Drain() { s.draining.Store(true) }

// ServeHTTP routes by exact path; the API is small and fixed, and a switch
// costs nothing per request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// A write deadline the connection's previous answer left (writeAll)
	// must not cut this one.
	setWriteDeadline(w, time.Time{})
	if s.draining.Load() || len(r.TransferEncoding) > 0 {
		// Draining: ask keep-alive clients to reconnect, to a gateway that
		// is staying. Transfer-Encoding: net/http has dropped any
		// Content-Length sent beside it, so the handler cannot tell a
		// plain chunked request from a smuggling attempt that RFC 9112
		// §6.1 says must close the connection; close after both.
		w.Header()["Connection"] = hdrClose
	}
	if c := s.state.Load().cors; c != nil && strings.HasPrefix(r.URL.Path, "/v1/") && c.apply(w, r) {
		return // a CORS preflight
	}
	if pr, ok := proxyRoutes[r.URL.Path]; ok {
		s.serveProxy(w, r, pr.ep, pr.forceStream)
		return
	}
	if r.Body != http.NoBody {
		unreadBody(w, r) // no other endpoint reads a body
	}
	switch r.URL.Path {
	case "/v1/models":
		s.serveModels(w, r)
	case "/health", "/healthz":
		s.serveHealth(w, r, s.state.Load().cfg.Admin.Listen == "")
	case "/ready", "/readyz":
		s.serveReady(w, r)
	case "/metrics":
		if s.state.Load().cfg.Admin.Listen != "" {
			s.notFound(w, r)
			return
		}
		s.serveMetrics(w, r)
	default:
		if isResponsesPath(r.URL.Path) {
			s.serveResponseByID(w, r)
			return
		}
		if strings.HasPrefix(r.URL.Path, modelsPrefix) {
			s.serveModel(w, r)
			return
		}
		s.notFound(w, r)
	}
}

// proxyRoute is where ServeHTTP sends a proxied API path.
type proxyRoute struct {
	ep          endpoint
	forceStream bool
}

// proxyRoutes are the paths serveProxy serves, the only handler that
// reads request bodies; every other path's body is left unread.
var proxyRoutes = map[string]proxyRoute{
	"/v1/chat/completions":        {ep: epChat},
	"/v1/chat/completions/stream": {ep: epChat, forceStream: true},
	"/v1/embeddings":              {ep: epEmbeddings},
	"/v1/messages":                {ep: epMessages},
	"/v1/messages/count_tokens":   {ep: epCountTokens},
	"/v1/responses":               {ep: epResponses},
	"/v1/completions":             {ep: epCompletions},
	"/v1/moderations":             {ep: epModerations},
	"/v1/images/generations":      {ep: epImages},
	"/v1/audio/speech":            {ep: epSpeech},
	"/v1/audio/transcriptions":    {ep: epTranscriptions},
}

// unreadBodyGrace is how long net/http may go on reading a request body
// the handler did not read, after the answer. net/http drains up to
// 256 KiB of it, even on a connection it is about to close, and with no
// deadline of its own: a client that announced a body and sent nothing
// would hold the connection for ever. The grace lets a client that did
// send its body have it drained, so closing does not reset the connection
// under the answer it has yet to read.
const unreadBodyGrace = time.Second

// unreadBody prepares an answer given without reading r's body: the
// connection closes after it (the unread bytes cannot be told from a next
// request), and what net/http drains first takes at most unreadBodyGrace.
// Call it before the answer's headers go out.
func unreadBody(w http.ResponseWriter, r *http.Request) {
	if r.Body == http.NoBody {
		return
	}
	w.Header()["Connection"] = hdrClose
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(unreadBodyGrace))
}

// AdminHandler serves /metrics, the detailed /health and /ready, for the
// separate admin listener (config admin.listen).
func (s *Server) AdminHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TransferEncoding) > 0 {
			w.Header()["Connection"] = hdrClose
		}
		unreadBody(w, r)
		switch r.URL.Path {
		case "/metrics":
			s.serveMetrics(w, r)
		case "/health", "/healthz":
			s.serveHealth(w, r, true)
		case "/ready", "/readyz":
			s.serveReady(w, r)
		default:
			s.notFound(w, r)
		}
	})
}

func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	if !s.state.Load().adminAuthorized(r) {
		writeError(w, &apiError{Status: http.StatusUnauthorized, Type: typeInvalidRequest, Code: "invalid_api_key",
			Message: "/metrics needs the admin key: send it as 'Authorization: Bearer ADMIN_KEY'."})
		return
	}
	s.metricsH.ServeHTTP(w, r)
}

// adminAuthorized checks the admin key, in constant time, when one is set.
func (st *state) adminAuthorized(r *http.Request) bool {
	if len(st.adminKey) == 0 {
		return true
	}
	sum, ok := bearerSum(r)
	return ok && matchKey(sum, st.adminKey)
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Request-Id", requestID(r))
	writeError(w, &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Code: "unknown_url",
		Message: "Unknown request URL: " + r.Method + " " + sanitizePath(r.URL.Path) + "."})
}

// authorize checks the client's key in constant time against every
// configured key (no early exit, so timing does not tell which key or how
// much of it matched). It returns an opaque client id for rate limits.
// Anthropic-format clients (their SDKs, Claude Code) send the key as
// x-api-key, so the Messages endpoints take it there too.
func (st *state) authorize(r *http.Request, ep endpoint) (client string, e *apiError) {
	if len(st.keys) == 0 {
		return "open", nil
	}
	sum, ok := bearerSum(r)
	how := "'Authorization: Bearer YOUR_KEY'"
	switch ep.errorFormat() {
	case formatAnthropic:
		// Anthropic's SDKs and Claude Code send the key as x-api-key.
		how = "'x-api-key: YOUR_KEY' or " + how
		if !ok {
			sum, ok = xAPIKeySum(r)
		}
	}
	if !ok {
		return "", &apiError{Status: http.StatusUnauthorized, Type: typeInvalidRequest, Code: "invalid_api_key",
			Message: "You didn't provide an API key. Send it as " + how + "."}
	}
	if !matchKey(sum, st.keys) {
		return "", &apiError{Status: http.StatusUnauthorized, Type: typeInvalidRequest, Code: "invalid_api_key",
			Message: "Incorrect API key provided."}
	}
	return hex.EncodeToString(sum[:8]), nil
}

// bearerSum is the SHA-256 of the request's Bearer key. Keys are compared
// as fixed-size hashes, so the comparison's time says nothing of their length.
func bearerSum(r *http.Request) (sum [sha256.Size]byte, ok bool) {
	h := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return sum, false
	}
	return sha256.Sum256([]byte(strings.TrimSpace(h[len(prefix):]))), true
}

// xAPIKeySum is the SHA-256 of the request's x-api-key header.
func xAPIKeySum(r *http.Request) (sum [sha256.Size]byte, ok bool) {
	k := strings.TrimSpace(r.Header.Get("X-Api-Key"))
	if len(k) == 0 {
		return sum, false
	}
	return sha256.Sum256([]byte(k)), true
}

// matchKey compares sum with every key in constant time, with no early exit.
func matchKey(sum [sha256.Size]byte, keys [][sha256.Size]byte) bool {
	match := 0
	for i := range keys {
		match |= subtle.ConstantTimeCompare(sum[:], keys[i][:])
	}
	return match == 1
}

// requestID keeps a client's X-Request-Id when it is a sane token (it ends
// up in logs and headers, so nothing that could inject a line or header),
// and makes one otherwise.
func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); id != "" && len(id) <= 128 && safeToken(id) {
		return id
	}
	var b [16]byte
	u1, u2 := rand.Uint64(), rand.Uint64()
	for i := 0; i < 8; i++ {
		b[i], b[8+i] = byte(u1>>(8*i)), byte(u2>>(8*i))
	}
	return hex.EncodeToString(b[:])
}

func safeToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '_' || c == '.' || c == ':' || c == '/' || c == '+' || c == '=') {
			return false
		}
	}
	return true
}

// sanitizePath keeps an echoed path printable and short.
func sanitizePath(p string) string {
	if len(p) > 200 {
		p = p[:200] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, p)
}
