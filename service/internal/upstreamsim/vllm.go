package upstreamsim

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The states of a simulated vLLM server (Config.VLLM), as /sim/state names
// them.
const (
	// VLLMLoading: /health and model requests answer 503, as while vLLM
	// loads its weights.
	VLLMLoading = "loading"
	// VLLMReady: serving.
	VLLMReady = "ready"
	// VLLMDead: every request's connection is dropped without an answer
	// (the /sim/ endpoints excepted), as from a crashed server.
	VLLMDead = "dead"
)

// vllmDefaultMaxRunning is vLLM's default max_num_seqs, the running
// requests the KV-cache usage is a share of when MaxRunning is unset.
const vllmDefaultMaxRunning = 256

// vllm is the part of the simulator that acts as vLLM: its state, its
// Prometheus metrics, and the slots bounding running requests.
type vllm struct {
	// forced is a state set through SetVLLMState ("" follows LoadTime).
	forced  atomic.Pointer[string]
	readyAt time.Time

	running, waiting atomic.Int64
	registry         *prometheus.Registry
	handler          http.Handler

	prompt, generation *prometheus.CounterVec
	ttft, e2e          *prometheus.HistogramVec
	runningG, waitingG *prometheus.GaugeVec
	gpuCache, kvCache  *prometheus.GaugeVec
}

func newVLLM(loadTime time.Duration) *vllm {
	v := &vllm{readyAt: time.Now().Add(loadTime), registry: prometheus.NewRegistry()}
	label := []string{"model_name"}
	v.prompt = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm:prompt_tokens_total", Help: "Number of prefill tokens processed."}, label)
	v.generation = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm:generation_tokens_total", Help: "Number of generation tokens processed."}, label)
	v.ttft = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vllm:time_to_first_token_seconds", Help: "Histogram of time to first token in seconds.",
		Buckets: []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}}, label)
	v.e2e = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vllm:e2e_request_latency_seconds", Help: "Histogram of end to end request latency in seconds.",
		Buckets: []float64{0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240}}, label)
	v.runningG = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vllm:num_requests_running", Help: "Number of requests in model execution batches."}, label)
	v.waitingG = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vllm:num_requests_waiting", Help: "Number of requests waiting to be processed."}, label)
	// vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc (v0.10);
	// dashboards and alerts use either, so both are served. Both are a
	// fraction in [0, 1], despite the name.
	v.gpuCache = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vllm:gpu_cache_usage_perc", Help: "GPU KV-cache usage. 1 means 100 percent usage."}, label)
	v.kvCache = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vllm:kv_cache_usage_perc", Help: "KV-cache usage. 1 means 100 percent usage."}, label)
	v.registry.MustRegister(v.prompt, v.generation, v.ttft, v.e2e, v.runningG, v.waitingG, v.gpuCache, v.kvCache)
	v.handler = promhttp.HandlerFor(v.registry, promhttp.HandlerOpts{})
	return v
}

// state is the server's state now.
func (v *vllm) state() string {
	if f := v.forced.Load(); f != nil {
		return *f
	}
	if time.Now().Before(v.readyAt) {
		return VLLMLoading
	}
	return VLLMReady
}

// servedName is the model_name label: the served model (vLLM serves one),
// or the simulator's name when any model is accepted.
func servedName(cfg *settings) string {
	if len(cfg.Models) > 0 {
		return cfg.Models[0]
	}
	return "upstream-sim"
}

// SetVLLMState forces the simulated vLLM server into state (VLLMLoading,
// VLLMReady or VLLMDead) until the next call, overriding Config.LoadTime.
func (s *Server) SetVLLMState(state string) error {
	switch state {
	case VLLMLoading, VLLMReady, VLLMDead:
	default:
		return fmt.Errorf("unknown vLLM state %q: use %s, %s or %s", state, VLLMLoading, VLLMReady, VLLMDead)
	}
	s.vllm.forced.Store(&state)
	return nil
}

// VLLMState is the simulated vLLM server's state now.
func (s *Server) VLLMState() string { return s.vllm.state() }

// serveVLLM answers what vLLM answers differently from the plain simulator:
// /health, /metrics, and anything while loading or dead. It reports whether
// it answered; if not, the request is served as usual.
func (s *Server) serveVLLM(w http.ResponseWriter, r *http.Request, cfg *settings) bool {
	state := s.vllm.state()
	if state == VLLMDead {
		dropConnection(w, true)
		return true
	}
	s.refreshVLLMGauges(cfg)
	switch r.URL.Path {
	case "/health":
		if state == VLLMLoading {
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		w.WriteHeader(http.StatusOK)
		return true
	case "/metrics":
		s.vllm.handler.ServeHTTP(w, r)
		return true
	}
	if state == VLLMLoading {
		_ = apiError{status: http.StatusServiceUnavailable, typ: "server_error",
			message: "upstream-sim (vllm): the model is still loading"}.write(w)
		return true
	}
	return false
}

// serveState is GET /sim/state (the vLLM state) and POST
// /sim/state?set=loading|ready|dead.
func (s *Server) serveState(w http.ResponseWriter, r *http.Request) {
	if !s.cfg.Load().VLLM {
		http.Error(w, "not a vLLM simulator (start it with -vllm)", http.StatusNotFound)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPost:
		if err := s.SetVLLMState(r.URL.Query().Get("set")); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "use GET or POST", http.StatusMethodNotAllowed)
		return
	}
	_ = writeJSON(w, http.StatusOK, []byte(`{"state":"`+s.vllm.state()+`"}`))
}

// vllmRequest is one chat request's run on the simulated vLLM server.
type vllmRequest struct {
	v     *vllm
	cfg   *settings
	start time.Time
	slot  bool
}

// vllmBegin takes a running slot for a chat request, waiting (counted in
// num_requests_waiting) while MaxRunning are running. ok is false when the
// client left while waiting.
func (s *Server) vllmBegin(ctx context.Context, cfg *settings) (vr vllmRequest, ok bool) {
	vr = vllmRequest{v: s.vllm, cfg: cfg, start: time.Now()}
	if cfg.slots != nil {
		select {
		case cfg.slots <- struct{}{}:
		default:
			s.vllm.waiting.Add(1)
			s.refreshVLLMGauges(cfg)
			select {
			case cfg.slots <- struct{}{}:
				s.vllm.waiting.Add(-1)
			case <-ctx.Done():
				s.vllm.waiting.Add(-1)
				s.refreshVLLMGauges(cfg)
				return vr, false
			}
		}
		vr.slot = true
	}
	s.vllm.running.Add(1)
	s.refreshVLLMGauges(cfg)
	return vr, true
}

// firstToken records the time to the first token (the simulated latency).
func (vr *vllmRequest) firstToken() {
	vr.v.ttft.WithLabelValues(servedName(vr.cfg)).Observe(time.Since(vr.start).Seconds())
}

// end releases the request's slot; answered says it was served, so its
// tokens and latency count.
func (vr *vllmRequest) end(s *Server, answered bool, prompt, generated int) {
	if vr.slot {
		<-vr.cfg.slots
	}
	vr.v.running.Add(-1)
	s.refreshVLLMGauges(vr.cfg)
	if !answered {
		return
	}
	name := servedName(vr.cfg)
	vr.v.prompt.WithLabelValues(name).Add(float64(prompt))
	vr.v.generation.WithLabelValues(name).Add(float64(generated))
	vr.v.e2e.WithLabelValues(name).Observe(time.Since(vr.start).Seconds())
}

// refreshVLLMGauges sets the gauges from the counts: KV-cache usage is the
// running requests' share of the slots (each running sequence holds its
// blocks).
func (s *Server) refreshVLLMGauges(cfg *settings) {
	v, name := s.vllm, servedName(cfg)
	running := v.running.Load()
	v.runningG.WithLabelValues(name).Set(float64(running))
	v.waitingG.WithLabelValues(name).Set(float64(v.waiting.Load()))
	capacity := cfg.MaxRunning
	if capacity <= 0 {
		capacity = vllmDefaultMaxRunning
	}
	usage := min(float64(running)/float64(capacity), 1)
	v.gpuCache.WithLabelValues(name).Set(usage)
	v.kvCache.WithLabelValues(name).Set(usage)
}

// isSimPath says whether a path is one of the simulator's own endpoints,
// which no state or fault touches.
func isSimPath(p string) bool { return strings.HasPrefix(p, "/sim/") }
