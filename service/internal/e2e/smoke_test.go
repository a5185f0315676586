package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/relaygate/relaygate/deploy"
	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/app"
	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
	"github.com/relaygate/relaygate/smoketest"
)

// healthyBudgetMS is far above anything the local stack takes, even under
// -race on a loaded two-core machine, so the healthy run cannot fail on
// speed; the slow-upstream case sets its own budget ten times below its
// upstream's latency.
const healthyBudgetMS = 5000

// localStack is a whole Relaygate on loopback: the simulator as upstream, a
// real Redis for the cache, the gateway from app.New and a real Prometheus
// scraping it with the project's config and rules.
type localStack struct {
	sim     *upstreamsim.Server
	simCfg  upstreamsim.Config
	redis   *testenv.Redis
	gateway *httptest.Server
	prom    *testenv.Prometheus
	key     string
	logs    *testenv.SyncBuffer
}

func startLocalStack(t *testing.T) *localStack {
	t.Helper()
	s := &localStack{key: "sk-smoke-" + randomHex(t), logs: &testenv.SyncBuffer{}}
	s.simCfg = upstreamsim.Config{Models: []string{"gpt-4.1", "text-embedding-3-small"}, CompletionTokens: 8, TokensPerChunk: 2}
	s.sim = upstreamsim.New(s.simCfg)
	up := httptest.NewServer(s.sim)
	t.Cleanup(up.Close)
	s.redis = testenv.StartRedis(t)
	pg := testenv.StartPostgres(t)

	doc := `
listen: "127.0.0.1:0"
client_keys: ["${KEY}"]
upstreams:
  - {name: simulator, base_url: "${SIM_URL}", timeout: 30s, connect_timeout: 2s}
models:
  - name: text-embedding-3-small
    route: [simulator]
    price: {input_per_mtok: 0.02, output_per_mtok: 0}
  - name: gpt-4.1
    route: [simulator]
    price: {input_per_mtok: 1.40, output_per_mtok: 5.60}
    reference_price: {input_per_mtok: 2.00, output_per_mtok: 8.00}
retry: {attempts: 2, backoff_min: 10ms, backoff_max: 100ms}
cache: {redis_url: "${REDIS_URL}", ttl: 10m, timeout: 500ms}
gpu: {expected_count: 0, interval: 1h}
slo: {latency_p95: 5s}
log: {level: warn, requests: false}
ledger: {postgres_url: "${LEDGER_URL}", spill_dir: "${SPILL_DIR}", batch_interval: 50ms}
`
	env := map[string]string{"KEY": s.key, "SIM_URL": up.URL + "/v1", "REDIS_URL": s.redis.URL, "LEDGER_URL": pg.URL, "SPILL_DIR": t.TempDir()}
	cfg, err := config.Parse([]byte(doc), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	app.RouteRedisLogs(log)
	a, err := app.New(t.Context(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("app.Close: %v", err)
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", s.logs.String())
		}
	})
	s.gateway = httptest.NewServer(a.Handler())
	t.Cleanup(s.gateway.Close)
	s.prom = testenv.StartPrometheus(t, testenv.PrometheusOptions{Targets: []string{s.gateway.Listener.Addr().String()}})
	return s
}

// options are the smoke test's inputs as a deploy of this stack would
// export them.
func (s *localStack) options() smoketest.Options {
	return smoketest.Options{
		Outputs: smoketest.Outputs{
			GatewayURL: s.gateway.URL, PrometheusURL: s.prom.URL, GatewayAPIKey: s.key,
			ExpectedGPUCount: 0, LatencyBudgetP95Ms: healthyBudgetMS, ImageRef: "relaygate-gateway:e2e",
			Hosts: []string{"127.0.0.1"}, LedgerEnabled: true,
		},
		Stack:       "e2e",
		Requests:    12,
		Concurrency: 3,
		// Failure guards for a slow shared machine, not expectations.
		StepTimeout:    time.Minute,
		LatencyTimeout: 2 * time.Minute,
		PrometheusWait: 2 * time.Minute,
	}
}

// TestSmokeTestAgainstLocalStack runs the whole smoke test against a real
// local stack: healthy, every check passes; with one fault injected, the
// check for that fault fails with the hint that fixes it, and nothing else
// does.
func TestSmokeTestAgainstLocalStack(t *testing.T) {
	s := startLocalStack(t)
	wrongKey := "sk-wrong-" + randomHex(t)

	cases := []struct {
		name string
		// fault breaks the stack or the outputs and undoes the break in
		// t.Cleanup.
		fault    func(t *testing.T, o *smoketest.Options)
		wantFail []string
		wantSkip []string
		hints    map[string]string // check → text its hint must contain
	}{
		{
			name:  "healthy",
			fault: func(*testing.T, *smoketest.Options) {},
		},
		{
			name: "wrong key",
			fault: func(_ *testing.T, o *smoketest.Options) {
				o.Outputs.GatewayAPIKey = wrongKey
			},
			wantFail: []string{smoketest.CheckAuth},
			wantSkip: []string{smoketest.CheckCompletion, smoketest.CheckStream, smoketest.CheckCache, smoketest.CheckLatency, smoketest.CheckMetrics, smoketest.CheckLedger},
			hints:    map[string]string{smoketest.CheckAuth: "pulumi config set --secret gatewayApiKey"},
		},
		{
			name: "slow upstream",
			fault: func(t *testing.T, o *smoketest.Options) {
				// Ten times the budget: no scheduling hiccup can hide it.
				slow := s.simCfg
				slow.Latency = time.Second
				s.sim.SetConfig(slow)
				t.Cleanup(func() { s.sim.SetConfig(s.simCfg) })
				o.Outputs.LatencyBudgetP95Ms = 100
				o.Requests, o.Concurrency = 6, 3
			},
			wantFail: []string{smoketest.CheckLatency},
			hints:    map[string]string{smoketest.CheckLatency: "The upstream takes most of it"},
		},
		{
			name: "redis stopped",
			fault: func(t *testing.T, _ *smoketest.Options) {
				s.redis.Stop()
				t.Cleanup(func() {
					s.redis.Restart()
					s.waitCacheUp(t)
				})
			},
			wantFail: []string{smoketest.CheckCache},
			hints:    map[string]string{smoketest.CheckCache: "Redis is unreachable from the gateway"},
		},
		{
			name: "prometheus without the rules",
			fault: func(t *testing.T, o *smoketest.Options) {
				p := testenv.StartPrometheus(t, testenv.PrometheusOptions{
					Targets:    []string{s.gateway.Listener.Addr().String()},
					ConfigFile: configWithoutRules(t),
				})
				o.Outputs.PrometheusURL = p.URL
			},
			wantFail: []string{smoketest.CheckPrometheusRules},
			hints:    map[string]string{smoketest.CheckPrometheusRules: "rule_files"},
		},
		{
			name: "fewer GPUs than expected",
			fault: func(t *testing.T, o *smoketest.Options) {
				// One more than this machine has, so the case holds on a
				// GPU host too.
				o.Outputs.ExpectedGPUCount = gpuCount(t, s.gateway.URL) + 1
			},
			wantFail: []string{smoketest.CheckGPU},
			hints:    map[string]string{smoketest.CheckGPU: "nvidia-smi"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := s.options()
			var progress testenv.SyncBuffer
			opts.Progress = &progress
			tc.fault(t, &opts)

			rep := smoketest.Run(t.Context(), opts)

			var table, js bytes.Buffer
			if err := rep.WriteTable(&table); err != nil {
				t.Fatal(err)
			}
			if err := rep.WriteJSON(&js); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("progress:\n%s\nreport:\n%s", progress.String(), table.String())
				}
			})

			var gotFail, gotSkip []string
			for _, st := range rep.Steps {
				switch st.Status {
				case smoketest.Fail:
					gotFail = append(gotFail, st.Name)
				case smoketest.Skip:
					gotSkip = append(gotSkip, st.Name)
				}
			}
			if !slices.Equal(gotFail, tc.wantFail) || !slices.Equal(gotSkip, tc.wantSkip) {
				t.Errorf("failed %v, skipped %v; want failed %v, skipped %v", gotFail, gotSkip, tc.wantFail, tc.wantSkip)
			}
			if want := len(tc.wantFail)+len(tc.wantSkip) == 0; rep.Passed != want {
				t.Errorf("Passed = %v, want %v", rep.Passed, want)
			}
			if len(rep.Steps) != 13 {
				t.Errorf("%d checks ran, want all 13", len(rep.Steps))
			}
			// The one part this stack lacks is the model server; the
			// ledger is real (Postgres), and its check reads the row of
			// the smoke test's own completion.
			for _, st := range rep.Steps {
				if st.Status == smoketest.NotApplicable && st.Name != smoketest.CheckModelServer {
					t.Errorf("check %s is not applicable: %s", st.Name, st.Detail)
				}
			}
			for name, want := range tc.hints {
				st := rep.Step(name)
				if st == nil || !strings.Contains(st.Hint, want) {
					t.Errorf("check %s hint = %q, want it to contain %q", name, hintOf(st), want)
				}
				if !strings.Contains(table.String(), want) {
					t.Errorf("the printed report does not tell the operator %q", want)
				}
			}
			for _, secret := range []string{s.key, wrongKey} {
				for what, out := range map[string]string{"table": table.String(), "JSON report": js.String(), "progress": progress.String()} {
					if strings.Contains(out, secret) {
						t.Errorf("the %s contains a client key", what)
					}
				}
			}
			var decoded smoketest.Report
			if err := json.Unmarshal(js.Bytes(), &decoded); err != nil || len(decoded.Steps) != len(rep.Steps) {
				t.Errorf("JSON report does not round-trip: %v", err)
			}

			switch tc.name {
			case "healthy":
				l := rep.Latency
				if l == nil || l.Requests != 12 || l.Errors != 0 || l.Total.P95 <= 0 || l.Upstream.P50 <= 0 || l.Gateway.P50 <= 0 {
					t.Errorf("latency = %+v, want 12 requests, no errors, and total, upstream and gateway times measured", l)
				}
				if rep.Model != "gpt-4.1" {
					t.Errorf("model = %q, want the first chat model, gpt-4.1 (not the embedding model listed before it)", rep.Model)
				}
			case "slow upstream":
				// A lower bound the simulator guarantees, not a timing
				// expectation: every answer waited at least a second.
				if l := rep.Latency; l == nil || l.Upstream.P50 < 1000 || l.Total.P50 < 1000 {
					t.Errorf("latency = %+v, want upstream and total p50 ≥ 1000 ms", l)
				}
			}
		})
	}
}

// waitCacheUp waits until the gateway has found Redis again. After an
// outage it lets a call through to Redis as a probe only once its back-off
// has passed, so this sends cacheable requests (each a cache call) until
// /health says a probe succeeded. There is no push signal to wait on; the
// deadline only guards against a gateway that never recovers.
func (s *localStack) waitCacheUp(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	probe := `{"model":"gpt-4.1","temperature":0,"messages":[{"role":"user","content":"cache recovery probe"}]}`
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.gateway.URL+"/v1/chat/completions", strings.NewReader(probe))
		req.Header.Set("Authorization", "Bearer "+s.key)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		var h struct {
			Cache struct {
				Up bool `json:"up"`
			} `json:"cache"`
		}
		if err == nil {
			req, _ = http.NewRequestWithContext(ctx, http.MethodGet, s.gateway.URL+"/health", nil)
			if resp, err = http.DefaultClient.Do(req); err == nil {
				err = json.NewDecoder(resp.Body).Decode(&h)
				resp.Body.Close()
			}
		}
		if err == nil && h.Cache.Up {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the gateway's cache did not come back after Redis restarted (last error: %v)", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// configWithoutRules is the project's Prometheus config with its
// rule_files removed, as a Prometheus deployed without its rules runs.
func configWithoutRules(t *testing.T) string {
	t.Helper()
	files, err := deploy.PrometheusFiles()
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(files["prometheus.yml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	if _, ok := cfg["rule_files"]; !ok {
		t.Fatal("the project's prometheus.yml has no rule_files to remove")
	}
	delete(cfg, "rule_files")
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "prometheus.yml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func gpuCount(t *testing.T, gatewayURL string) int {
	t.Helper()
	resp, err := http.Get(gatewayURL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h struct {
		GPU struct {
			Available bool `json:"available"`
			Count     int  `json:"count"`
		} `json:"gpu"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	if !h.GPU.Available {
		return 0
	}
	return h.GPU.Count
}

func hintOf(s *smoketest.Step) string {
	if s == nil {
		return "(no such check)"
	}
	return s.Hint
}

func randomHex(t *testing.T) string {
	t.Helper()
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}
