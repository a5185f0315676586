package upstreamsim

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	openai "github.com/sashabaranov/go-openai"
)

// TestVLLMStates: a vLLM simulator loads (503 on /health and on chat), then
// serves; /sim/state forces loading and dead (every connection dropped)
// and back.
func TestVLLMStates(t *testing.T) {
	sim, ts := startSim(t, Config{VLLM: true, LoadTime: time.Hour, Models: []string{"llama-3.1-8b"}})
	chat := `{"model":"llama-3.1-8b","messages":[{"role":"user","content":"hi"}]}`
	if resp, _ := post(t, ts, http.MethodGet, "/health", "", ""); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/health while loading: %d, want 503", resp.StatusCode)
	}
	if resp, body := post(t, ts, http.MethodPost, "/v1/chat/completions", "", chat); resp.StatusCode != http.StatusServiceUnavailable ||
		!strings.Contains(string(body), "loading") {
		t.Fatalf("chat while loading: %d %s, want 503", resp.StatusCode, body)
	}
	if resp, body := post(t, ts, http.MethodPost, "/sim/state?set=ready", "", ""); resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"ready"`) {
		t.Fatalf("set ready: %d %s", resp.StatusCode, body)
	}
	if resp, _ := post(t, ts, http.MethodGet, "/health", "", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("/health once ready: %d", resp.StatusCode)
	}
	if resp, body := post(t, ts, http.MethodGet, "/v1/models", "", ""); resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"id":"llama-3.1-8b"`) {
		t.Fatalf("/v1/models: %d %s, want the served model", resp.StatusCode, body)
	}
	if resp, _ := post(t, ts, http.MethodPost, "/v1/chat/completions", "", chat); resp.StatusCode != http.StatusOK {
		t.Fatalf("chat once ready: %d", resp.StatusCode)
	}

	if err := sim.SetVLLMState(VLLMDead); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(testContext(t), http.MethodGet, ts.URL+"/health", nil)
	if resp, err := ts.Client().Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("/health of a dead server answered %d", resp.StatusCode)
	}
	if resp, body := post(t, ts, http.MethodGet, "/sim/state", "", ""); !strings.Contains(string(body), `"dead"`) || resp.StatusCode != http.StatusOK {
		t.Fatalf("/sim/state while dead: %d %s", resp.StatusCode, body)
	}
	if resp, _ := post(t, ts, http.MethodPost, "/sim/state?set=asleep", "", ""); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown state: %d, want 400", resp.StatusCode)
	}

	// Without VLLM there is no /health and no state to set.
	_, plain := startSim(t, Config{})
	if resp, _ := post(t, plain, http.MethodGet, "/health", "", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("plain simulator /health: %d, want 404", resp.StatusCode)
	}
	if resp, _ := post(t, plain, http.MethodPost, "/sim/state?set=dead", "", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("plain simulator /sim/state: %d, want 404", resp.StatusCode)
	}
}

// TestVLLMMetrics: /metrics has vLLM's names, counting what the OpenAI
// client's requests did; with MaxRunning 1, a second request waits and is
// counted waiting.
func TestVLLMMetrics(t *testing.T) {
	sim, ts := startSim(t, Config{VLLM: true, Models: []string{"m"}, CompletionTokens: 5, MaxRunning: 1, Latency: 300 * time.Millisecond})
	client := newClient(ts, "")
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := client.CreateChatCompletion(testContext(t), openai.ChatCompletionRequest{Model: "m",
				Messages: []openai.ChatCompletionMessage{{Role: "user", Content: "hello there"}}}); err != nil {
				t.Error(err)
			}
		}()
	}
	// While both are in: one running, one waiting.
	deadline := time.Now().Add(testTimeout)
	for sim.vllm.waiting.Load() != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	families := scrapeVLLM(t, ts.URL)
	if g := families["vllm:num_requests_running"]; g != 1 {
		t.Errorf("running = %v while one runs and one waits", g)
	}
	if g := families["vllm:num_requests_waiting"]; g != 1 {
		t.Errorf("waiting = %v, want 1", g)
	}
	if g := families["vllm:kv_cache_usage_perc"]; g != 1 || families["vllm:gpu_cache_usage_perc"] != 1 {
		t.Errorf("KV cache usage %v / %v, want 1 with the only slot taken", g, families["vllm:gpu_cache_usage_perc"])
	}
	wg.Wait()
	families = scrapeVLLM(t, ts.URL)
	for name, want := range map[string]float64{
		"vllm:num_requests_running": 0, "vllm:num_requests_waiting": 0, "vllm:generation_tokens_total": 10,
		"vllm:time_to_first_token_seconds_count": 2, "vllm:e2e_request_latency_seconds_count": 2,
	} {
		if got := families[name]; got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if families["vllm:prompt_tokens_total"] < 2 {
		t.Errorf("prompt tokens %v, want some for each request", families["vllm:prompt_tokens_total"])
	}
}

// scrapeVLLM reads /metrics into name → value (histograms as _count), for
// the model_name "m".
func scrapeVLLM(t *testing.T, base string) map[string]float64 {
	t.Helper()
	req, _ := http.NewRequestWithContext(testContext(t), http.MethodGet, base+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	out := map[string]float64{}
	for name, f := range mf {
		for _, m := range f.Metric {
			if len(m.Label) != 1 || m.Label[0].GetName() != "model_name" || m.Label[0].GetValue() != "m" {
				t.Errorf("%s has labels %v, want model_name=m", name, m.Label)
			}
			switch {
			case m.Gauge != nil:
				out[name] = m.Gauge.GetValue()
			case m.Counter != nil:
				out[name] = m.Counter.GetValue()
			case m.Histogram != nil:
				out[name+"_count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}
