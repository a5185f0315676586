package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// vllmSim is one simulated vLLM server over loopback, with what the
// gateway's probes sent it.
type vllmSim struct {
	*upstreamsim.Server
	ts         *httptest.Server
	probes     atomic.Int64
	arrivals   atomic.Int64 // chat requests, answered or not (while loading)
	probeAuth  atomic.Value // the Authorization header of the last probe
	closedOnce sync.Once
}

const poolModel = "llama-3.1-8b"

func startVLLM(t *testing.T, latency time.Duration) *vllmSim {
	t.Helper()
	v := &vllmSim{Server: upstreamsim.New(upstreamsim.Config{VLLM: true, Models: []string{poolModel}, Latency: latency, CompletionTokens: 4})}
	v.probeAuth.Store("")
	v.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			v.probes.Add(1)
			v.probeAuth.Store(r.Header.Get("Authorization"))
		}
		if r.URL.Path == "/v1/chat/completions" {
			v.arrivals.Add(1)
		}
		v.ServeHTTP(w, r)
	}))
	t.Cleanup(v.close)
	return v
}

// close stops the server: what a dead model server is to the gateway.
func (v *vllmSim) close() { v.closedOnce.Do(v.ts.Close) }

func (v *vllmSim) chats() uint64 {
	return v.Stats().Requests[upstreamsim.EndpointChatCompletions]
}

// poolConfig is a gateway whose model poolModel routes to a pool of sims
// (named gpu-0, gpu-1, …), each with upstreamExtra in its mapping, and
// whose entry is the pool's mapping (members filled in).
func poolConfig(t *testing.T, sims []*vllmSim, upstreamExtra, poolExtra, extra string) *config.Config {
	t.Helper()
	var y strings.Builder
	fmt.Fprintf(&y, "listen: \"127.0.0.1:0\"\nclient_keys: [%q]\nupstreams:\n", testClientKey)
	var names []string
	for i, s := range sims {
		name := fmt.Sprintf("gpu-%d", i)
		names = append(names, name)
		fmt.Fprintf(&y, "  - {name: %s, base_url: %q, timeout: 20s%s}\n", name, s.ts.URL+"/v1", upstreamExtra)
	}
	fmt.Fprintf(&y, "models:\n  - name: %s\n    route:\n      - {pool: [%s]%s}\n    price: {input_per_mtok: 1, output_per_mtok: 1}\n",
		poolModel, strings.Join(names, ", "), poolExtra)
	y.WriteString("retry: {attempts: 3, backoff_min: 1ms, backoff_max: 5ms}\ncircuit_breaker: {failures: 1000, cooldown: 1h}\n")
	y.WriteString(extra)
	cfg, err := config.Parse([]byte(y.String()), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("config: %v\n%s", err, y.String())
	}
	return cfg
}

func startPoolGateway(t *testing.T, cfg *config.Config) (*httptest.Server, *Server, *metrics.Metrics) {
	t.Helper()
	m := metrics.New()
	gw := New(cfg, Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)), Metrics: m})
	srv := httptest.NewServer(gw)
	t.Cleanup(func() { srv.Close(); _ = gw.Close() })
	return srv, gw, m
}

// load sends n chat requests, conc at a time, and counts the answers by
// the upstream that gave them, and the failures.
// loadPool serves one model server per delay in a pool (poolExtra: the
// pool's own settings) and sends it n chat requests, conc at a time. Any
// request failing fails the test; it returns the servers and how many
// requests each upstream answered, by name.
func loadPool(t *testing.T, delays []time.Duration, poolExtra string, n, conc int) ([]*vllmSim, map[string]int) {
	t.Helper()
	var sims []*vllmSim
	for _, d := range delays {
		sims = append(sims, startVLLM(t, d))
	}
	srv, _, _ := startPoolGateway(t, poolConfig(t, sims, "", poolExtra, ""))
	got, failed := load(t, srv.URL, n, conc)
	if failed != 0 {
		t.Fatalf("%d requests failed", failed)
	}
	return sims, got
}

func load(t *testing.T, gwURL string, n, conc int) (byUpstream map[string]int, failed int) {
	t.Helper()
	var mu sync.Mutex
	byUpstream = map[string]int{}
	jobs := make(chan int)
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	t.Cleanup(client.CloseIdleConnections)
	body := `{"model":"` + poolModel + `","messages":[{"role":"user","content":"hello"}]}`
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				up, err := chatOnce(client, gwURL, body)
				mu.Lock()
				if err != nil {
					failed++
					if failed <= 3 {
						t.Errorf("request failed: %v", err)
					}
				} else {
					byUpstream[up]++
				}
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return byUpstream, failed
}

func chatOnce(client *http.Client, gwURL, body string) (upstream string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, gwURL+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testClientKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return resp.Header.Get("X-Relaygate-Upstream"), nil
}

// waitUntil polls cond; the deadline is a failure guard, not a speed bound.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func upMetric(t *testing.T, m *metrics.Metrics, name string) float64 {
	return metricValue(t, m, "relaygate_upstream_up", map[string]string{"upstream": name})
}

// TestPoolSpreadsEvenly: three equal model servers in a least_busy pool
// each get a third of 600 concurrent requests, within 10%, and none fails.
func TestPoolSpreadsEvenly(t *testing.T) {
	d := 20 * time.Millisecond
	sims, got := loadPool(t, []time.Duration{d, d, d}, "", 600, 12)
	for i := range sims {
		name := fmt.Sprintf("gpu-%d", i)
		share := float64(got[name]) / 600
		t.Logf("%s answered %d (%.1f%%)", name, got[name], 100*share)
		if math.Abs(share-1.0/3) > 0.1/3 {
			t.Errorf("%s answered %d of 600, more than 10%% off an even 200 (all: %v)", name, got[name], got)
		}
		if n := sims[i].chats(); int(n) != got[name] {
			t.Errorf("%s saw %d requests, the gateway says it answered %d", name, n, got[name])
		}
	}
}

// TestPoolFavoursTheFaster: least_busy sends more to the member that
// finishes sooner.
func TestPoolFavoursTheFaster(t *testing.T) {
	_, got := loadPool(t, []time.Duration{10 * time.Millisecond, 100 * time.Millisecond}, "", 300, 8)
	t.Logf("fast member %d, slow member %d of 300", got["gpu-0"], got["gpu-1"])
	if got["gpu-0"] < 2*got["gpu-1"] {
		t.Errorf("fast member answered %d, slow %d: want the fast one at least twice the slow", got["gpu-0"], got["gpu-1"])
	}
}

// TestPoolWeighted: a weighted pool shares by its weights.
func TestPoolWeighted(t *testing.T) {
	d := 5 * time.Millisecond
	_, got := loadPool(t, []time.Duration{d, d}, ", balance: weighted, weights: {gpu-0: 3}", 400, 8)
	t.Logf("weights 3:1 gave %d:%d", got["gpu-0"], got["gpu-1"])
	if math.Abs(float64(got["gpu-0"])/400-0.75) > 0.05 {
		t.Errorf("gpu-0 (weight 3 of 4) answered %d of 400, want 300 within 5%%", got["gpu-0"])
	}
}

// TestPoolSkipsLoadingAndDeadMembers: under steady load, a member that
// starts loading (health 503) is taken out by its next probe, a member that
// dies likewise, and no request fails on the way: the ones that reach them
// before the probe does are retried on another member. A member that
// recovers comes back.
func TestPoolSkipsLoadingAndDeadMembers(t *testing.T) {
	sims := []*vllmSim{startVLLM(t, 5*time.Millisecond), startVLLM(t, 5*time.Millisecond), startVLLM(t, 5*time.Millisecond)}
	// A probe every 300ms: long beside scheduling noise, short for a test.
	cfg := poolConfig(t, sims, ", health: {path: /health, interval: 300ms, timeout: 250ms}", "", "")
	srv, gw, m := startPoolGateway(t, cfg)
	waitUntil(t, "every member's first probe", func() bool { return gw.healthReport().Status == "ok" })

	var stop atomic.Bool
	var failed atomic.Int64
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	t.Cleanup(client.CloseIdleConnections)
	body := `{"model":"` + poolModel + `","messages":[{"role":"user","content":"hello"}]}`
	var answered atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if _, err := chatOnce(client, srv.URL, body); err != nil {
					if failed.Add(1) <= 3 {
						t.Errorf("request failed: %v", err)
					}
					continue
				}
				answered.Add(1)
			}
		}()
	}
	// Some traffic before anything happens.
	waitUntil(t, "traffic on every member", func() bool { return sims[0].chats() > 20 && sims[1].chats() > 20 && sims[2].chats() > 20 })

	// gpu-1 starts loading: its next probe takes it out.
	probesBefore := metricValue(t, m, "relaygate_health_probes_total", map[string]string{"upstream": "gpu-1", "result": "fail"})
	errs1 := metricValue(t, m, "relaygate_upstream_requests_total", map[string]string{"upstream": "gpu-1", "result": "error"})
	if err := sims[1].SetVLLMState(upstreamsim.VLLMLoading); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "gpu-1 marked down", func() bool { return upMetric(t, m, "gpu-1") == 0 })
	failedProbes := metricValue(t, m, "relaygate_health_probes_total", map[string]string{"upstream": "gpu-1", "result": "fail"}) - probesBefore
	atDown := sims[1].arrivals.Load()
	t.Logf("gpu-1 (loading) out after %v failed probe(s); %v attempts met its 503 before, each retried on another member", failedProbes,
		metricValue(t, m, "relaygate_upstream_requests_total", map[string]string{"upstream": "gpu-1", "result": "error"})-errs1)
	if failedProbes != 1 {
		t.Errorf("gpu-1 went down after %v failed probes, want the first (unhealthy_threshold 1)", failedProbes)
	}
	n := answered.Load()
	waitUntil(t, "100 more answers", func() bool { return answered.Load() > n+100 })
	// Requests already on their way when the verdict flipped may still
	// arrive; none is sent after. At most one per client is in flight.
	extra := sims[1].arrivals.Load() - atDown
	t.Logf("gpu-1 got %d requests after its probe failed (already on their way)", extra)
	if extra > 4 {
		t.Errorf("gpu-1 got %d requests after its probe failed", extra)
	}
	h := gw.healthReport()
	for _, u := range h.Upstreams {
		if u.Name == "gpu-1" && (u.Available || u.Probe == nil || u.Probe.Up || u.Probe.LastError != "HTTP 503") {
			t.Errorf("/health for gpu-1 = %+v, want unavailable by its probe (HTTP 503)", u)
		}
	}
	if h.Status != "degraded" {
		t.Errorf("status %q with one member down, want degraded", h.Status)
	}

	// gpu-2 dies: refused connections until its probe takes it out.
	errsBefore := metricValue(t, m, "relaygate_upstream_requests_total", map[string]string{"upstream": "gpu-2", "result": "error"})
	sims[2].close()
	waitUntil(t, "gpu-2 marked down", func() bool { return upMetric(t, m, "gpu-2") == 0 })
	t.Logf("gpu-2 (dead) out; %v attempts failed on it before, each retried on another member",
		metricValue(t, m, "relaygate_upstream_requests_total", map[string]string{"upstream": "gpu-2", "result": "error"})-errsBefore)
	n = answered.Load()
	waitUntil(t, "100 more answers", func() bool { return answered.Load() > n+100 })

	// gpu-1 is loaded: its next probe brings it back.
	atUp := sims[1].chats()
	if err := sims[1].SetVLLMState(upstreamsim.VLLMReady); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "gpu-1 back", func() bool { return upMetric(t, m, "gpu-1") == 1 })
	waitUntil(t, "traffic on gpu-1 again", func() bool { return sims[1].chats() > atUp+20 })

	stop.Store(true)
	wg.Wait()
	t.Logf("%d answers, %d failed", answered.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d requests failed while members went down", failed.Load())
	}
	if got := metricValue(t, m, "relaygate_upstream_inflight", map[string]string{"upstream": "gpu-0"}); got != 0 {
		t.Errorf("relaygate_upstream_inflight{gpu-0} = %v with nothing in flight", got)
	}
}

// TestProbesGateReadiness: a lone probed upstream that is loading makes
// /ready fail and relaygate_upstream_up 0 before any client tries it; the
// probe carries no key unless send_key says so.
func TestProbesGateReadiness(t *testing.T) {
	sim := startVLLM(t, 0)
	if err := sim.SetVLLMState(upstreamsim.VLLMLoading); err != nil {
		t.Fatal(err)
	}
	cfg := poolConfig(t, []*vllmSim{sim}, `, api_key: "sk-upstream-secret", health: {interval: 200ms}`, "", "")
	srv, gw, m := startPoolGateway(t, cfg)
	ready := func() int { return readyStatus(t, srv.URL) }
	waitUntil(t, "a probe", func() bool { return sim.probes.Load() > 0 })
	if code := ready(); code != http.StatusServiceUnavailable {
		t.Errorf("/ready with the only upstream loading: %d, want 503", code)
	}
	if up := upMetric(t, m, "gpu-0"); up != 0 {
		t.Errorf("relaygate_upstream_up = %v while loading", up)
	}
	r := post(t, srv.URL, "/v1/chat/completions", `{"model":"`+poolModel+`","messages":[{"role":"user","content":"hi"}]}`)
	if r.status != http.StatusBadGateway || !strings.Contains(string(r.body), "health probe") {
		t.Errorf("chat with every member down: %d %s, want 502 naming the probe", r.status, r.body)
	}
	if chats := sim.chats(); chats != 0 {
		t.Errorf("a loading upstream got %d chat requests", chats)
	}
	if err := sim.SetVLLMState(upstreamsim.VLLMReady); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "ready", func() bool { return ready() == http.StatusOK })
	if up := upMetric(t, m, "gpu-0"); up != 1 {
		t.Errorf("relaygate_upstream_up = %v once ready", up)
	}
	if a := sim.probeAuth.Load().(string); a != "" {
		t.Errorf("probe sent Authorization %q; the key stays out of probes by default", a)
	}

	// send_key: the probe carries the upstream's key.
	cfg = poolConfig(t, []*vllmSim{sim}, `, api_key: "sk-upstream-secret", health: {interval: 200ms, send_key: true}`, "", "")
	gw.Reload(cfg)
	waitUntil(t, "a probe with the key", func() bool { return sim.probeAuth.Load().(string) == "Bearer sk-upstream-secret" })
}

// TestReloadStopsOldProbes: a reload keeps an unchanged probe (and its
// verdict), replaces a changed one, stops a removed one; Close stops all.
// No goroutine is left behind after many reloads.
func TestReloadStopsOldProbes(t *testing.T) {
	sims := []*vllmSim{startVLLM(t, 0), startVLLM(t, 0)}
	probed := func(interval string) *config.Config {
		return poolConfig(t, sims, ", health: {interval: "+interval+"}", "", "")
	}
	_, gw, _ := startPoolGateway(t, probed("200ms"))
	waitUntil(t, "both up", func() bool { return gw.healthReport().Status == "ok" })
	if n := gw.runningProbes(); n != 2 {
		t.Fatalf("%d probes running, want 2", n)
	}
	before := gw.state.Load().upstreams[0].Health
	gw.Reload(probed("200ms"))
	if gw.state.Load().upstreams[0].Health != before || gw.runningProbes() != 2 {
		t.Error("a reload that kept the probe replaced it")
	}
	if gw.healthReport().Status != "ok" {
		t.Error("an unchanged probe lost its verdict across a reload")
	}

	base := runtime.NumGoroutine()
	for i := range 20 {
		gw.Reload(probed([]string{"300ms", "400ms"}[i%2]))
		if n := gw.runningProbes(); n != 2 {
			t.Fatalf("after reload %d: %d probes running, want 2", i, n)
		}
	}
	if gw.state.Load().upstreams[0].Health == before {
		t.Error("a changed probe was kept")
	}
	// Reload has waited for each stopped probe; allow a little for the
	// runtime's own goroutines (connections closing).
	if n := runtime.NumGoroutine(); n > base+10 {
		t.Errorf("%d goroutines after 20 reloads, %d before: old probes leak", n, base)
	}

	// Without health: the probes stop, and the sims hear no more of them.
	gw.Reload(poolConfig(t, sims, "", "", ""))
	if n := gw.runningProbes(); n != 0 {
		t.Errorf("%d probes running with none configured", n)
	}
	// A probe cancelled by the reload may still reach the server just
	// after: let those land, then watch for more than two intervals, where
	// a probe left running would show.
	time.Sleep(500 * time.Millisecond)
	p0 := sims[0].probes.Load()
	time.Sleep(time.Second)
	if p := sims[0].probes.Load(); p != p0 {
		t.Errorf("%d probes arrived after the reload removed them", p-p0)
	}

	gw.Reload(probed("200ms"))
	waitUntil(t, "probes back", func() bool { return gw.runningProbes() == 2 })
	_ = gw.Close()
	if n := gw.runningProbes(); n != 0 {
		t.Errorf("%d probes running after Close", n)
	}
	time.Sleep(500 * time.Millisecond)
	p0 = sims[1].probes.Load()
	time.Sleep(time.Second)
	if p := sims[1].probes.Load(); p != p0 {
		t.Errorf("%d probes arrived after Close", p-p0)
	}
	gw.Reload(probed("200ms")) // a closed server starts none
	if n := gw.runningProbes(); n != 0 {
		t.Errorf("%d probes started after Close", n)
	}
}

// TestSelfHostedCost: a member's tokens cost its hosts' hourly price
// spread over tokens_per_hour, in relaygate_cost_usd_total.
func TestSelfHostedCost(t *testing.T) {
	sims := []*vllmSim{startVLLM(t, 0)}
	// 3.6 $/h over 1.2M tokens/h: 3 $ per million tokens.
	srv, _, m := startPoolGateway(t, poolConfig(t, sims, ", hourly_cost_usd: 3.6, tokens_per_hour: 1200000", "", ""))
	r := post(t, srv.URL, "/v1/chat/completions", `{"model":"`+poolModel+`","messages":[{"role":"user","content":"hi there"}]}`)
	if r.status != http.StatusOK {
		t.Fatalf("chat: %d %s", r.status, r.body)
	}
	var usage struct {
		Usage struct {
			Prompt     int `json:"prompt_tokens"`
			Completion int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(r.body, &usage); err != nil {
		t.Fatal(err)
	}
	want := float64(usage.Usage.Prompt+usage.Usage.Completion) * 3 / 1e6
	if usage.Usage.Completion == 0 {
		t.Fatalf("no usage in %s", r.body)
	}
	labels := map[string]string{"model": poolModel, "upstream": "gpu-0"}
	waitUntil(t, "the cost", func() bool { return metricValue(t, m, "relaygate_cost_usd_total", labels) > 0 })
	if got := metricValue(t, m, "relaygate_cost_usd_total", labels); math.Abs(got-want) > 1e-12 {
		t.Errorf("cost %v, want %v (%d tokens at 3 $/MTok)", got, want, usage.Usage.Prompt+usage.Usage.Completion)
	}
	if got := metricValue(t, m, "relaygate_upstream_hourly_cost_usd", map[string]string{"upstream": "gpu-0"}); got != 3.6 {
		t.Errorf("relaygate_upstream_hourly_cost_usd = %v, want 3.6", got)
	}
}
