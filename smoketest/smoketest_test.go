package smoketest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRunUnreachableGateway: nothing listens at the gateway URL. Every
// check fails or is skipped with a message; none panics or hangs.
func TestRunUnreachableGateway(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // the port is now closed: connections are refused

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	rep := Run(ctx, Options{
		Outputs:        Outputs{GatewayURL: url, PrometheusURL: url, GatewayAPIKey: "sk-unreachable-0123456789", LatencyBudgetP95Ms: 1000},
		Requests:       2,
		StepTimeout:    20 * time.Second,
		PrometheusWait: 5 * time.Second,
	})
	if rep.Passed || len(rep.Steps) != 13 {
		t.Fatalf("Passed %v with %d checks, want a failed report with all 13", rep.Passed, len(rep.Steps))
	}
	h := rep.Step(CheckHealth)
	if h.Status != Fail || !strings.Contains(h.Detail, "refused") || !strings.Contains(h.Hint, "docker ps") {
		t.Errorf("health = %+v, want a refused connection explained", *h)
	}
	for _, st := range rep.Steps {
		if st.Status == Pass {
			t.Errorf("check %s passed against nothing: %s", st.Name, st.Detail)
		}
	}
}

// TestRunHangingGateway: a gateway that accepts connections but never
// answers. Each check gives up at its own deadline and says so.
func TestRunHangingGateway(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)

	rep := Run(t.Context(), Options{
		Outputs:        Outputs{GatewayURL: srv.URL, PrometheusURL: srv.URL, GatewayAPIKey: "sk-hanging-0123456789", LatencyBudgetP95Ms: 1000},
		StepTimeout:    300 * time.Millisecond,
		PrometheusWait: 300 * time.Millisecond,
	})
	if rep.Passed {
		t.Fatal("a gateway that never answers passed")
	}
	for _, name := range []string{CheckHealth, CheckReady, CheckAuth, CheckPrometheusTarget, CheckPrometheusRules} {
		st := rep.Step(name)
		if st == nil || st.Status != Fail || !strings.Contains(st.Detail, "did not answer in time") || !strings.Contains(st.Hint, "firewall") {
			t.Errorf("%s = %+v, want a timeout explained", name, st)
		}
	}
}

// TestCheckHealthVerdicts: how /health's status and upstreams become a
// verdict. An upstream disabled on purpose (no key) is the operator's call;
// one whose circuit is open is a failure with the fix.
func TestCheckHealthVerdicts(t *testing.T) {
	cases := []struct {
		name, body string
		want       Status
		detail     string
		hint       string
	}{
		{"ok", `{"status":"ok","upstreams":[{"name":"relay","available":true,"state":"closed"}],"cache":{"enabled":true,"up":true}}`,
			Pass, "status ok; upstreams: relay ok; cache up", ""},
		{"fallback disabled by config", `{"status":"degraded","upstreams":[{"name":"relay","available":true,"state":"closed"},{"name":"openai","available":false,"disabled":"OPENAI_API_KEY is not set","state":"closed"}]}`,
			Pass, "upstreams: relay ok, openai disabled; cache off", ""},
		{"open circuit", `{"status":"degraded","upstreams":[{"name":"relay","available":false,"state":"open","last_error":"HTTP 401: invalid key"},{"name":"openai","available":true,"state":"closed"}]}`,
			Fail, "failing: relay (circuit open: HTTP 401: invalid key)", "pulumi config set --secret holysheepApiKey"},
		{"model server still loading", `{"status":"degraded","upstreams":[{"name":"relay","available":true,"state":"closed"},{"name":"self-hosted","available":false,"state":"closed","probe":{"up":false,"consecutive_failures":3,"last_error":"HTTP 503"}}],"cache":{"enabled":true,"up":true}}`,
			Pass, "upstreams: relay ok, self-hosted probe down; cache up; its probe keeps out self-hosted (health probe down: HTTP 503)", ""},
		{"every upstream kept out by its probe", `{"status":"unavailable","upstreams":[{"name":"self-hosted","available":false,"state":"closed","probe":{"up":false,"pending":true}}]}`,
			Fail, "self-hosted probe not probed yet", "no usable upstream"},
		{"draining", `{"status":"draining","upstreams":[]}`, Fail, "status draining", "run the smoke test again"},
		{"not relaygate", `<html>hello</html>`, Fail, "is gatewayUrl pointing at Relaygate?", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte(tc.body))
			}))
			t.Cleanup(srv.Close)
			r := &runner{opts: Options{Outputs: Outputs{GatewayURL: srv.URL}}, http: newHTTPClient(1)}
			var s Step
			r.checkHealth(t.Context(), &s)
			if s.Status != tc.want || !strings.Contains(s.Detail, tc.detail) || !strings.Contains(s.Hint, tc.hint) {
				t.Errorf("got %s %q (hint %q); want %s with %q (hint %q)", s.Status, s.Detail, s.Hint, tc.want, tc.detail, tc.hint)
			}
		})
	}
}

// TestWaitReady: right after a deploy, /ready answers 503 (or the load
// balancer 502) until the new containers pass their health checks. The wait
// ends after a few 200s in a row, or at its limit, and decides nothing.
func TestWaitReady(t *testing.T) {
	saved := readyPoll
	readyPoll = 10 * time.Millisecond
	t.Cleanup(func() { readyPoll = saved })

	t.Run("becomes ready", func(t *testing.T) {
		var calls atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n := calls.Add(1)
			switch {
			case r.URL.Path != "/ready":
				http.NotFound(w, r)
			case n <= 3 || n == 5: // unhealthy targets, then one stale answer
				w.WriteHeader(http.StatusServiceUnavailable)
			default:
				_, _ = w.Write([]byte("ready"))
			}
		}))
		t.Cleanup(srv.Close)
		var progress strings.Builder
		r := &runner{opts: Options{Outputs: Outputs{GatewayURL: srv.URL}, WaitReady: 10 * time.Second, StepTimeout: time.Second, Progress: &progress}, http: newHTTPClient(1)}
		r.waitReady(t.Context())
		if got := calls.Load(); got != 5+readyStreak {
			t.Errorf("asked /ready %d times, want %d (the streak restarts after a 503)", got, 5+readyStreak)
		}
		if !strings.Contains(progress.String(), "GET /ready answers 200 (after") {
			t.Errorf("progress:\n%s", progress.String())
		}
	})
	t.Run("never ready: bounded", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadGateway)
		}))
		t.Cleanup(srv.Close)
		var progress strings.Builder
		r := &runner{opts: Options{Outputs: Outputs{GatewayURL: srv.URL}, WaitReady: time.Second, StepTimeout: time.Second, Progress: &progress}, http: newHTTPClient(1)}
		t0 := time.Now()
		r.waitReady(t.Context())
		if d := time.Since(t0); d > 5*time.Second {
			t.Errorf("waited %s with a 1s limit", d)
		}
		if !strings.Contains(progress.String(), "did not answer 200 within 1s (last: HTTP 502); running the checks anyway") {
			t.Errorf("progress:\n%s", progress.String())
		}
	})
}

// testRunner is a runner of one check at a time against the gateway of
// opts, as Run makes it, with opts' defaults applied.
func testRunner(t *testing.T, opts Options) *runner {
	t.Helper()
	r := &runner{opts: opts, report: &Report{}, runID: "test"}
	r.opts.defaults()
	r.connect(4)
	t.Cleanup(r.http.CloseIdleConnections)
	return r
}
