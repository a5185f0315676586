package smoketest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
)

func init() {
	// The gateway below answers at once; nothing is gained by waiting the
	// real intervals between tries and readings.
	modelServerPoll = 20 * time.Millisecond
	gpuPoll = 20 * time.Millisecond
}

// fakeGPUGateway is a gateway in front of a model server, as far as the
// model-server check sees it: /health with its GPU section, and chat
// completions answered by "self-hosted" once the model has "loaded".
type fakeGPUGateway struct {
	loadingFor int    // completions answered 503 first
	failWith   string // every completion answered 502 with this message
	upstream   string // the X-Relaygate-Upstream of an answer
	used       uint64 // GPU memory in use
	noGPU      string // the GPU section's reason, when set
	util       float64

	completions atomic.Int64
	mu          sync.Mutex
	busySince   time.Time
}

func (f *fakeGPUGateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/health":
		f.mu.Lock()
		busy := !f.busySince.IsZero()
		f.mu.Unlock()
		dev := map[string]any{"index": 0, "name": "Tesla T4", "memory_used_bytes": f.used, "memory_total_bytes": uint64(15 << 30), "utilization_ratio": 0.0}
		if busy {
			dev["utilization_ratio"] = f.util
		}
		gpu := map[string]any{"available": true, "count": 1, "driver_version": "570.124.06", "devices": []any{dev}, "updated_at": time.Now()}
		if f.noGPU != "" {
			gpu = map[string]any{"available": false, "reason": f.noGPU, "count": 0, "devices": []any{}}
		}
		last := ""
		if f.failWith != "" {
			last = "HTTP 502: " + f.failWith
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"status": "ok", "gpu": gpu,
			"upstreams": []any{map[string]any{"name": "self-hosted", "available": f.failWith == "", "last_error": last}}})
	case "/v1/chat/completions":
		var req openai.ChatCompletionRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Model != "qwen2.5-7b-instruct" {
			w.WriteHeader(http.StatusNotFound)
			_, _ = fmt.Fprintf(w, `{"error":{"message":"model %q is not configured","type":"invalid_request_error"}}`, req.Model)
			return
		}
		n := f.completions.Add(1)
		switch {
		case f.failWith != "":
			w.WriteHeader(http.StatusBadGateway)
			_, _ = fmt.Fprintf(w, `{"error":{"message":%q,"type":"upstream_error"}}`, f.failWith)
			return
		case n <= int64(f.loadingFor):
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":{"message":"no upstream available for qwen2.5-7b-instruct","type":"upstream_error"}}`))
			return
		}
		if strings.Contains(req.Messages[0].Content, "GPU load") {
			f.mu.Lock()
			if f.busySince.IsZero() {
				f.busySince = time.Now()
			}
			f.mu.Unlock()
		}
		w.Header().Set("X-Relaygate-Upstream", f.upstream)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"id":"c1","object":"chat.completion","model":"qwen2.5-7b-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"Hello."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}`))
	default:
		http.NotFound(w, r)
	}
}

func modelServerRunner(t *testing.T, url string, wait time.Duration) *runner {
	t.Helper()
	return testRunner(t, Options{
		Outputs:         Outputs{GatewayURL: url, GatewayAPIKey: "sk-test-0123456789abcdef", SelfHostedModel: "qwen2.5-7b-instruct", SelfHostedUpstream: "self-hosted"},
		ModelServerWait: wait, UtilizationWindow: 5 * time.Second, StepTimeout: 10 * time.Second,
	})
}

func TestCheckModelServer(t *testing.T) {
	t.Parallel()
	const held = 13 << 30
	tests := []struct {
		name       string
		gw         *fakeGPUGateway
		wait       time.Duration
		status     Status
		detail     []string
		hint       string
		minAnswers int64
	}{
		{"loads, answers, holds and works the GPU", &fakeGPUGateway{loadingFor: 3, upstream: "self-hosted", used: held, util: 0.62},
			time.Minute, Pass, []string{"qwen2.5-7b-instruct answered via self-hosted", "GPU memory 13.0 GiB of 15.0 GiB held (87%)", "utilization up to 62%"}, "", 5},
		{"answered by a fallback", &fakeGPUGateway{upstream: "openai", used: held, util: 0.5},
			time.Minute, Fail, []string{`answered by upstream "openai", not the model server ("self-hosted")`}, "relaygate-model-server", 1},
		{"out of memory while loading", &fakeGPUGateway{failWith: "upstream self-hosted: HTTP 500: CUDA out of memory. Tried to allocate 2.00 GiB", upstream: "self-hosted"},
			300 * time.Millisecond, Fail, []string{"did not answer within 300ms", "CUDA out of memory"}, "Lower modelServer.gpuMemoryUtilization", 2},
		{"the server went away", &fakeGPUGateway{failWith: "upstream self-hosted: connection refused", upstream: "self-hosted"},
			200 * time.Millisecond, Fail, []string{"did not answer within 200ms"}, "the model is not loaded", 2},
		{"model not loaded, still loading at the deadline", &fakeGPUGateway{loadingFor: 1 << 30, upstream: "self-hosted"},
			200 * time.Millisecond, Fail, []string{"HTTP 503"}, "Still downloading or loading", 2},
		{"the server does not hold the GPU", &fakeGPUGateway{upstream: "self-hosted", used: 300 << 20, util: 0.5},
			time.Minute, Fail, []string{"GPU memory in use is 0.3 GiB of 15.0 GiB"}, "DeviceRequests", 1},
		{"no driver in the gateway's view", &fakeGPUGateway{upstream: "self-hosted", noGPU: "NVML: driver not loaded"},
			time.Minute, Fail, []string{"the gateway reads no GPU (NVML: driver not loaded)"}, "nvidia-smi", 1},
		{"utilization never moves", &fakeGPUGateway{upstream: "self-hosted", used: held, util: 0},
			time.Minute, Fail, []string{"GPU utilization stayed at 0"}, "nvidia-smi dmon", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(tt.gw)
			t.Cleanup(srv.Close)
			r := modelServerRunner(t, srv.URL, tt.wait)
			var s Step
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			r.checkModelServer(ctx, &s)
			if s.Status != tt.status {
				t.Fatalf("status %s, want %s: %s (hint: %s)", s.Status, tt.status, s.Detail, s.Hint)
			}
			for _, w := range tt.detail {
				if !strings.Contains(s.Detail, w) {
					t.Errorf("detail lacks %q: %s", w, s.Detail)
				}
			}
			if !strings.Contains(s.Hint, tt.hint) {
				t.Errorf("hint lacks %q: %s", tt.hint, s.Hint)
			}
			if n := tt.gw.completions.Load(); n < tt.minAnswers {
				t.Errorf("%d completions sent, want at least %d", n, tt.minAnswers)
			}
		})
	}
}

// TestModelServerHint: the server's own words pick the diagnosis.
func TestModelServerHint(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		code       int
		text, want string
	}{
		{502, "torch.OutOfMemoryError: CUDA out of memory", "CUDA out of memory"},
		{502, "Cannot access gated repo for url https://huggingface.co/meta-llama/...: 401", "hfToken"},
		{502, "RuntimeError: The NVIDIA driver on your system is too old", "newer driver"},
		{503, "no upstream available", "the model is not loaded"},
		{404, "model not configured", "route selfHostedModel to the self-hosted upstream"},
	} {
		if got := modelServerHint(tt.code, tt.text, ""); !strings.Contains(got, tt.want) {
			t.Errorf("modelServerHint(%d, %q) = %q, want it to contain %q", tt.code, tt.text, got, tt.want)
		}
	}
}

// TestRunSkipsTheModelServerWithoutOne: a stack whose outputs name no
// model server (local) has the check marked not applicable, saying why,
// which does not fail the run.
func TestRunSkipsTheModelServerWithoutOne(t *testing.T) {
	t.Parallel()
	// A gateway that accepts the key and lists a model, and nothing else.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/models" || r.Header.Get("Authorization") != "Bearer sk-local-0123456789" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"object":"list","data":[{"id":"gpt-4.1","object":"model","created":0,"owned_by":"relaygate"}]}`)
	}))
	t.Cleanup(srv.Close)
	rep := Run(t.Context(), Options{
		Outputs:     Outputs{GatewayURL: srv.URL, GatewayAPIKey: "sk-local-0123456789", LatencyBudgetP95Ms: 1000},
		Requests:    1,
		StepTimeout: 5 * time.Second,
	})
	st := rep.Step(CheckModelServer)
	if st == nil || st.Status != NotApplicable || !strings.Contains(st.Detail, "runs no model server") {
		t.Fatalf("model server check = %+v, want it not applicable", st)
	}
	for _, f := range rep.Failed() {
		if f.Name == CheckModelServer {
			t.Errorf("the model server check of a stack without one counts as failed")
		}
	}
}
