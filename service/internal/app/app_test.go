package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

const clientKey = "sk-app-test-key-0123456789"

type stack struct {
	gw  *httptest.Server
	app *App
	sim *upstreamsim.Server
}

// newStack runs a gateway built by New in front of a simulator, with the
// cache (and rate limits, when extra sets them) on redisURL.
func newStack(t *testing.T, redisURL, extra string, sim *upstreamsim.Server) *stack {
	t.Helper()
	if sim == nil {
		sim = upstreamsim.New(upstreamsim.Config{CompletionTokens: 20, TokensPerChunk: 3})
	}
	up := httptest.NewServer(sim)
	t.Cleanup(up.Close)
	doc := fmt.Sprintf(`
listen: "127.0.0.1:0"
client_keys: [%q]
upstreams:
  - {name: sim, base_url: %q, timeout: 10s, connect_timeout: 2s}
models:
  - name: m
    route: [sim]
    price: {input_per_mtok: 1, output_per_mtok: 2}
    reference_price: {input_per_mtok: 4, output_per_mtok: 8}
cache: {redis_url: %q, ttl: 1m, timeout: 100ms}
gpu: {interval: 1h}
%s`, clientKey, up.URL+"/v1", redisURL, extra)
	cfg, err := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	RouteRedisLogs(slog.New(slog.NewTextHandler(io.Discard, nil)))
	a, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	gw := httptest.NewServer(a.Handler())
	t.Cleanup(gw.Close)
	return &stack{gw: gw, app: a, sim: sim}
}

func (s *stack) post(t *testing.T, body string, hdr ...string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", s.gw.URL+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+clientKey)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

const det = `{"model":"m","temperature":0,"messages":[{"role":"user","content":"cache me"}]}`

func TestCache(t *testing.T) {
	r := testenv.StartRedis(t)
	s := newStack(t, r.URL, "", nil)

	code, h, first := s.post(t, det)
	if code != 200 || h.Get("X-Cache") != "MISS" {
		t.Fatalf("first: %d X-Cache=%q", code, h.Get("X-Cache"))
	}
	// Same request, keys reordered and spaced differently: the same entry.
	code, h, second := s.post(t, `{ "messages":[{"content":"cache me","role":"user"}], "temperature":0.0, "model":"m" }`)
	if code != 200 || h.Get("X-Cache") != "HIT" || h.Get("X-Relaygate-Cached-From") != "sim" {
		t.Fatalf("second: %d %v", code, h)
	}
	if !bytes.Equal(first, second) {
		t.Errorf("a hit must be byte-identical to the first answer:\n%s\n%s", first, second)
	}
	if got := s.sim.Stats().Requests[upstreamsim.EndpointChatCompletions]; got != 1 {
		t.Errorf("the upstream answered %d times, want 1", got)
	}

	t.Run("not deterministic is bypassed", func(t *testing.T) {
		body := `{"model":"m","messages":[{"role":"user","content":"cache me"}]}`
		for i := 0; i < 2; i++ {
			if _, h, _ := s.post(t, body); h.Get("X-Cache") != "BYPASS" {
				t.Errorf("X-Cache = %q, want BYPASS", h.Get("X-Cache"))
			}
		}
	})
	t.Run("the client can force caching", func(t *testing.T) {
		body := `{"model":"m","temperature":0.9,"messages":[{"role":"user","content":"forced"}]}`
		_, h1, _ := s.post(t, body, "X-Relaygate-Cache", "force")
		_, h2, _ := s.post(t, body, "X-Relaygate-Cache", "force")
		if h1.Get("X-Cache") != "MISS" || h2.Get("X-Cache") != "HIT" {
			t.Errorf("forced: %q then %q", h1.Get("X-Cache"), h2.Get("X-Cache"))
		}
	})
	t.Run("a streamed request is replayed from the cached answer", func(t *testing.T) {
		var whole openai.ChatCompletionResponse
		if err := json.Unmarshal(first, &whole); err != nil {
			t.Fatal(err)
		}
		// Raw HTTP: go-openai drops "temperature":0 (omitempty), so it
		// cannot ask for a deterministic answer by itself.
		code, h, raw := s.post(t, `{"model":"m","temperature":0,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"cache me"}]}`)
		if code != 200 || h.Get("X-Cache") != "HIT" || !strings.HasPrefix(h.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("stream from cache: %d %v", code, h)
		}
		var content strings.Builder
		var usage *openai.Usage
		for _, line := range strings.Split(string(raw), "\n") {
			data, ok := strings.CutPrefix(line, "data: ")
			if !ok || data == "[DONE]" {
				continue
			}
			var c openai.ChatCompletionStreamResponse
			if err := json.Unmarshal([]byte(data), &c); err != nil {
				t.Fatalf("chunk %q: %v", data, err)
			}
			if len(c.Choices) > 0 {
				content.WriteString(c.Choices[0].Delta.Content)
			}
			if c.Usage != nil {
				usage = c.Usage
			}
		}
		if !strings.HasSuffix(strings.TrimSpace(string(raw)), "data: [DONE]") {
			t.Errorf("replay does not end with [DONE]: %q", raw)
		}
		if content.String() != whole.Choices[0].Message.Content {
			t.Errorf("replayed %q, cached %q", content.String(), whole.Choices[0].Message.Content)
		}
		if usage == nil || usage.CompletionTokens != whole.Usage.CompletionTokens {
			t.Errorf("usage %v, want %v", usage, whole.Usage)
		}
		if got := s.sim.Stats().Requests[upstreamsim.EndpointChatCompletions]; got != 4 { // det once, bypass twice, forced once
			t.Errorf("upstream requests = %d: the stream must not have reached it", got)
		}
	})
	if hits := testenv.MetricValue(t, s.app.Metrics.Registry, "relaygate_cache_requests_total", map[string]string{"result": "hit"}); hits < 3 {
		t.Errorf("relaygate_cache_requests_total{result=hit} = %v", hits)
	}
}

// TestRedisKilledUnderLoad stops Redis while clients keep asking, then
// starts it again: no client request may fail, and the cache comes back by
// itself.
func TestRedisKilledUnderLoad(t *testing.T) {
	r := testenv.StartRedis(t)
	s := newStack(t, r.URL, "", nil)
	var sent, failed atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"model":"m","temperature":0,"messages":[{"role":"user","content":"q%d"}]}`, i%20)
				req, _ := http.NewRequest("POST", s.gw.URL+"/v1/chat/completions", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+clientKey)
				resp, err := http.DefaultClient.Do(req)
				sent.Add(1)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			}
		}(w)
	}
	waitSent := func(n int64) {
		deadline := time.Now().Add(60 * time.Second)
		for sent.Load() < n && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitSent(200)
	r.Stop()
	waitSent(sent.Load() + 300)
	r.Restart()
	waitSent(sent.Load() + 200)
	close(stop)
	wg.Wait()

	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed while Redis died and came back", failed.Load(), sent.Load())
	}
	if got := testenv.MetricValue(t, s.app.Metrics.Registry, "relaygate_cache_requests_total", map[string]string{"result": "error"}); got == 0 {
		t.Error("relaygate_cache_requests_total{result=error} did not count the outage")
	}
	// Back by itself: the same request is stored and then hit again.
	deadline := time.Now().Add(30 * time.Second)
	for {
		s.post(t, det)
		if _, h, _ := s.post(t, det); h.Get("X-Cache") == "HIT" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the cache did not come back after Redis restarted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d requests, 0 failed, Redis killed and restarted mid-run", sent.Load())
}

func TestRateLimitSharedByReplicas(t *testing.T) {
	r := testenv.StartRedis(t)
	limits := "rate_limit: {rpm: 5}\n"
	a := newStack(t, r.URL, limits, nil)
	b := newStack(t, r.URL, limits, nil)
	body := `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
	for i := 0; i < 5; i++ {
		s := a
		if i%2 == 1 {
			s = b
		}
		if code, _, msg := s.post(t, body); code != 200 {
			t.Fatalf("request %d: %d %s", i+1, code, msg)
		}
	}
	for _, s := range []*stack{a, b} {
		code, h, msg := s.post(t, body)
		if code != http.StatusTooManyRequests || h.Get("Retry-After") == "" {
			t.Fatalf("6th request: %d Retry-After=%q %s", code, h.Get("Retry-After"), msg)
		}
		var e struct {
			Error struct{ Message, Type, Code string }
		}
		if json.Unmarshal(msg, &e) != nil || e.Error.Code != "rate_limit_exceeded" {
			t.Errorf("429 body not in OpenAI's shape: %s", msg)
		}
	}
}

func TestHealthReportsCacheAndGPU(t *testing.T) {
	r := testenv.StartRedis(t)
	s := newStack(t, r.URL, "", nil)
	s.post(t, det) // touches Redis
	resp, err := http.Get(s.gw.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h struct {
		Cache struct {
			Enabled bool `json:"enabled"`
			Up      bool `json:"up"`
		} `json:"cache"`
		GPU struct {
			Available *bool  `json:"available"`
			Reason    string `json:"reason"`
		} `json:"gpu"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	if !h.Cache.Enabled || !h.Cache.Up {
		t.Errorf("cache = %+v, want enabled and up", h.Cache)
	}
	if h.GPU.Available == nil {
		t.Fatal("/health has no gpu.available")
	}
	if !*h.GPU.Available && h.GPU.Reason == "" {
		t.Error("no GPU and no reason given")
	}
}

// TestPrometheusScrapesTheGateway runs a real Prometheus with the
// project's config and rules against a gateway and reads a relaygate_
// series back through its HTTP API.
func TestPrometheusScrapesTheGateway(t *testing.T) {
	r := testenv.StartRedis(t)
	s := newStack(t, r.URL, "", nil)
	for i := 0; i < 3; i++ {
		s.post(t, det)
	}
	prom := testenv.StartPrometheus(t, testenv.PrometheusOptions{Targets: []string{strings.TrimPrefix(s.gw.URL, "http://")}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v, err := prom.WaitForSeries(ctx, `sum(relaygate_requests_total{model="m",code="200"})`)
	if err != nil {
		t.Fatal(err)
	}
	if len(v) != 1 || v[0].Value != 3 {
		t.Errorf("Prometheus read %v, want one series at 3", v)
	}
}

// TestReloadKeepsWhatNeedsARestart: listeners are bound at start. A reload
// that moves admin.listen must not take /metrics off the main listener
// while no admin listener runs: the running value is kept until a restart.
func TestReloadKeepsWhatNeedsARestart(t *testing.T) {
	redis := testenv.StartRedis(t)
	s := newStack(t, redis.URL, "", nil)
	metricsCode := func() int {
		resp, err := http.Get(s.gw.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := metricsCode(); code != 200 {
		t.Fatalf("/metrics = %d before the reload", code)
	}
	cfg := *s.app.cfg
	cfg.Admin.Listen = "127.0.0.1:19999"
	s.app.Reload(&cfg)
	if code := metricsCode(); code != 200 {
		t.Errorf("/metrics = %d after a reload that set admin.listen; no admin listener runs until a restart", code)
	}
}
