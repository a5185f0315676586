package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/relaygate/relaygate/service/internal/gpu"
	"github.com/relaygate/relaygate/service/internal/redisguard"
	"github.com/relaygate/relaygate/service/internal/route"
)

type upstreamHealth struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	Disabled  string `json:"disabled,omitempty"`
	route.BreakerStatus
	// Probe is the active health probe's verdict (absent: no probe).
	Probe *route.HealthStatus `json:"probe,omitempty"`
	// Inflight is the attempts outstanding at the upstream now.
	Inflight int64 `json:"inflight"`
}

// health is GET /health: liveness plus what an operator needs to see at a
// glance. It carries no secrets: names, states and error summaries only.
type health struct {
	Status        string           `json:"status"`
	Version       string           `json:"version,omitempty"`
	UptimeSeconds float64          `json:"uptime_seconds"`
	Upstreams     []upstreamHealth `json:"upstreams"`
	Models        int              `json:"models"`
	Auth          bool             `json:"auth"`
	Cache         redisHealth      `json:"cache"`
	RateLimit     redisHealth      `json:"rate_limit"`
	// Budgets is the Redis of named keys' limits and budgets, enabled
	// when some key has them.
	Budgets redisHealth   `json:"budgets"`
	GPU     *gpu.Snapshot `json:"gpu,omitempty"`
}

// redisHealth says whether a Redis-backed feature is on and reachable. A
// down Redis degrades the gateway (no cache, limits not enforced) but does
// not stop it serving.
type redisHealth struct {
	Enabled bool `json:"enabled"`
	*redisguard.Status
}

func (s *Server) healthReport() health {
	st := s.state.Load()
	h := health{Status: "ok", Version: s.version, UptimeSeconds: time.Since(s.started).Seconds(),
		Models: len(st.models), Auth: len(st.keys) > 0}
	if s.cache != nil {
		cs := s.cache.Status()
		h.Cache = redisHealth{Enabled: true, Status: &cs}
	}
	if s.limiter != nil {
		ls := s.limiter.Status()
		h.RateLimit = redisHealth{Enabled: true, Status: &ls}
	}
	if s.budgets != nil && st.limitedKeys {
		bs := s.budgets.Status()
		h.Budgets = redisHealth{Enabled: true, Status: &bs}
	}
	if s.gpu != nil {
		g := s.gpu.Snapshot()
		h.GPU = &g
	}
	up := 0
	for _, u := range st.upstreams {
		uh := upstreamHealth{Name: u.Name, Available: u.Available(), Disabled: u.Disabled, BreakerStatus: u.Breaker.Status(),
			Inflight: u.Load.Outstanding()}
		if u.Health != nil {
			ps := u.Health.Status()
			uh.Probe = &ps
		}
		if uh.Available {
			up++
		}
		h.Upstreams = append(h.Upstreams, uh)
	}
	switch {
	case s.draining.Load():
		h.Status = "draining"
	case up == 0:
		h.Status = "unavailable"
	case up < len(st.upstreams):
		h.Status = "degraded"
	}
	return h
}

// serveHealth answers 200 while the process is alive: a liveness probe
// must not restart a gateway because an upstream is down. The details
// (upstreams, Redis, GPUs) go only where the admin settings allow them;
// elsewhere the answer is the status alone.
func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request, details bool) {
	h := s.healthReport()
	if !details || !s.state.Load().adminAuthorized(r) {
		writeJSON(w, http.StatusOK, map[string]string{"status": h.Status})
		return
	}
	writeJSON(w, http.StatusOK, h)
}

// serveReady answers 200 only when a request could be served now: not
// draining, and at least one upstream takes traffic.
func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	h := s.healthReport()
	ready := h.Status == "ok" || h.Status == "degraded"
	code := http.StatusOK
	if !ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]any{"ready": ready, "status": h.Status})
}

// modelsRequest is the start of GET /v1/models and /v1/models/{id}: the
// method and the client key checked, the state to answer from, or nil
// once the client has been answered.
func (s *Server) modelsRequest(w http.ResponseWriter, r *http.Request) (*state, *keyPolicy) {
	w.Header().Set("X-Request-Id", requestID(r))
	st := s.state.Load()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, r, "GET")
		return nil, nil
	}
	_, pol, e := st.authorize(r, epChat)
	if e != nil {
		writeError(w, e)
		return nil, nil
	}
	return st, pol
}

// serveModels lists the models; a named key with an allow-list sees only
// those it may use.
func (s *Server) serveModels(w http.ResponseWriter, r *http.Request) {
	st, pol := s.modelsRequest(w, r)
	if st == nil {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if pol != nil && pol.modelsJSON != nil {
		_, _ = w.Write(pol.modelsJSON)
		return
	}
	_, _ = w.Write(st.modelsJSON)
}

// modelsPrefix starts GET /v1/models/{id}. Ids may hold slashes
// (deepseek-ai/DeepSeek-V3), so everything after it is the id.
const modelsPrefix = "/v1/models/"

// serveModel is GET /v1/models/{id}: the model in OpenAI's shape, or a 404
// in OpenAI's shape (model_not_found) for an id the gateway does not serve.
func (s *Server) serveModel(w http.ResponseWriter, r *http.Request) {
	st, pol := s.modelsRequest(w, r)
	if st == nil {
		return
	}
	id := strings.TrimPrefix(r.URL.Path, modelsPrefix)
	b, ok := st.modelJSON[id]
	if ok && pol != nil {
		by, _ := pol.refusedModel(id)
		ok = by == ""
	}
	if !ok {
		writeError(w, &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Code: "model_not_found", Param: "model",
			Message: fmt.Sprintf("The model %q does not exist on this gateway; GET /v1/models lists the models it serves.", truncate(sanitizePath(id), 100))})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, &apiError{Status: http.StatusMethodNotAllowed, Type: typeInvalidRequest, Code: "method_not_allowed",
		Message: "Method " + r.Method + " is not allowed here; use " + allow + "."})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, _ := json.MarshalIndent(v, "", "  ")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
