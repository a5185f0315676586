package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/testenv"
)

func TestPassThroughIsByteExact(t *testing.T) {
	up := newFakeUpstream(t, okCompletion)
	gw, _, _ := newGateway(t, gwOpts{}, up)

	res := post(t, gw.URL, "/v1/chat/completions", chatBody)
	if res.status != 200 {
		t.Fatalf("status %d: %s", res.status, res.body)
	}
	if got := string(up.lastBody()); got != chatBody {
		t.Errorf("upstream got a changed body:\n got %s\nwant %s", got, chatBody)
	}
	if string(res.body) != completionJSON {
		t.Errorf("client got a changed answer:\n got %s\nwant %s", res.body, completionJSON)
	}
	if got := res.header.Get("X-Relaygate-Upstream"); got != "a" {
		t.Errorf("X-Relaygate-Upstream = %q, want a", got)
	}
	if res.header.Get("X-Request-Id") == "" || res.header.Get("X-Cache") == "" {
		t.Errorf("missing X-Request-Id or X-Cache: %v", res.header)
	}
	if got := up.auths[0]; got != "Bearer upstream-key-a" {
		t.Errorf("upstream saw Authorization %q, want the gateway's own key", got)
	}
}

func TestRetriesAndFallback(t *testing.T) {
	tests := []struct {
		name         string
		primary      func(n int, w http.ResponseWriter, r *http.Request)
		opts         gwOpts
		wantUpstream string
		wantA, wantB int32
	}{
		{
			name: "503 then 200 retries the same upstream",
			primary: func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					http.Error(w, `{"error":{"message":"overloaded"}}`, http.StatusServiceUnavailable)
					return
				}
				okCompletion(n, w, r)
			},
			wantUpstream: "a", wantA: 2, wantB: 0,
		},
		{
			name: "always 500 falls back after the attempt budget",
			primary: func(n int, w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusInternalServerError)
			},
			opts:         gwOpts{attempts: 3},
			wantUpstream: "b", wantA: 3, wantB: 1,
		},
		{
			name: "429 with a Retry-After beyond backoff_max falls back at once",
			primary: func(n int, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "120")
				w.WriteHeader(http.StatusTooManyRequests)
			},
			opts:         gwOpts{attempts: 3},
			wantUpstream: "b", wantA: 1, wantB: 1,
		},
		{
			name: "connection reset falls back",
			primary: func(n int, w http.ResponseWriter, r *http.Request) {
				cutConnection(w)
			},
			wantUpstream: "b", wantA: 2, wantB: 1,
		},
		{
			name: "hang past the timeout falls back",
			primary: func(n int, w http.ResponseWriter, r *http.Request) {
				<-r.Context().Done()
			},
			opts:         gwOpts{timeout: "1s", attempts: 1},
			wantUpstream: "b", wantA: 1, wantB: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newFakeUpstream(t, tt.primary)
			b := newFakeUpstream(t, okCompletion)
			gw, _, m := newGateway(t, tt.opts, a, b)
			res := post(t, gw.URL, "/v1/chat/completions", chatBody)
			if res.status != 200 {
				t.Fatalf("status %d: %s", res.status, res.body)
			}
			if got := res.header.Get("X-Relaygate-Upstream"); got != tt.wantUpstream {
				t.Errorf("answered by %q, want %q", got, tt.wantUpstream)
			}
			if a.calls.Load() != tt.wantA || b.calls.Load() != tt.wantB {
				t.Errorf("calls a=%d b=%d, want a=%d b=%d", a.calls.Load(), b.calls.Load(), tt.wantA, tt.wantB)
			}
			if tt.wantB > 0 {
				if got := metricValue(t, m, "relaygate_fallbacks_total", map[string]string{"from": "a", "to": "b"}); got != 1 {
					t.Errorf("relaygate_fallbacks_total{a,b} = %v, want 1", got)
				}
			}
			failedA := metricValue(t, m, "relaygate_upstream_requests_total", map[string]string{"upstream": "a", "result": "error"}) +
				metricValue(t, m, "relaygate_upstream_requests_total", map[string]string{"upstream": "a", "result": "timeout"})
			wantFailed := float64(tt.wantA)
			if tt.wantUpstream == "a" {
				wantFailed-- // the last attempt answered
			}
			if failedA != wantFailed {
				t.Errorf("failed attempts at a = %v, want %v", failedA, wantFailed)
			}
			if got := metricValue(t, m, "relaygate_overhead_seconds", nil); got != 1 {
				t.Errorf("relaygate_overhead_seconds count = %v, want 1", got)
			}
		})
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	var first time.Time
	var gap time.Duration
	a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			first = time.Now()
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		gap = time.Since(first)
		okCompletion(n, w, r)
	})
	gw, _, _ := newGateway(t, gwOpts{backoff: "5s"}, a)
	res := post(t, gw.URL, "/v1/chat/completions", chatBody)
	if res.status != 200 {
		t.Fatalf("status %d: %s", res.status, res.body)
	}
	// A lower bound only: the gateway must not retry before the upstream
	// said it may.
	if gap < time.Second {
		t.Errorf("retried after %s, before the upstream's Retry-After of 1s", gap)
	}
}

func TestEveryUpstreamFails(t *testing.T) {
	tests := []struct {
		name     string
		handle   func(n int, w http.ResponseWriter, r *http.Request)
		timeout  string
		status   int
		code     string
		contains []string
	}{
		{"502 names each upstream and its error",
			func(n int, w http.ResponseWriter, r *http.Request) {
				http.Error(w, `{"error":{"message":"model overloaded"}}`, http.StatusServiceUnavailable)
			}, "5s", 502, "upstream_failed", []string{"a: HTTP 503: model overloaded", "b: HTTP 503"}},
		{"504 when every upstream timed out",
			func(n int, w http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
			"150ms", 504, "upstream_timeout", []string{"a: no answer within timeout 150ms", "b: no answer"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newFakeUpstream(t, tt.handle), newFakeUpstream(t, tt.handle)
			gw, _, _ := newGateway(t, gwOpts{timeout: tt.timeout, attempts: 1}, a, b)
			res := post(t, gw.URL, "/v1/chat/completions", chatBody)
			if res.status != tt.status {
				t.Fatalf("status %d, want %d: %s", res.status, tt.status, res.body)
			}
			msg, _, code := openAIError(t, res.body)
			if code != tt.code {
				t.Errorf("code %q, want %q", code, tt.code)
			}
			for _, s := range tt.contains {
				if !strings.Contains(msg, s) {
					t.Errorf("message %q does not say %q", msg, s)
				}
			}
			if strings.Contains(msg, "upstream-key") {
				t.Errorf("error leaks an upstream key: %s", msg)
			}
		})
	}
}

// TestUpstreamWithoutTheModel: the gateway serves the model, so an
// upstream's 404 says that upstream does not (a relay without it, a
// base_url without /v1). The next upstream may serve it; the upstream is
// up all the same, so its breaker is not charged. When every upstream
// says 404, the client gets a 404 in OpenAI's shape.
func TestUpstreamWithoutTheModel(t *testing.T) {
	notFound := func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"error":{"message":"The model 'm' does not exist","code":"model_not_found"}}`)
	}
	htmlNotFound := func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, "<html>404 page not found</html>")
	}
	t.Run("the next upstream serves it", func(t *testing.T) {
		a, b := newFakeUpstream(t, htmlNotFound), newFakeUpstream(t, okCompletion)
		gw, srv, _ := newGateway(t, gwOpts{attempts: 3, breakerN: 1}, a, b)
		for range 2 {
			res := post(t, gw.URL, "/v1/chat/completions", chatBody)
			if res.status != 200 || res.header.Get("X-Relaygate-Upstream") != "b" {
				t.Fatalf("status %d from %q, want 200 from b: %s", res.status, res.header.Get("X-Relaygate-Upstream"), res.body)
			}
		}
		if a.calls.Load() != 2 {
			t.Errorf("a got %d requests, want 2: one each, not retried, and its circuit must stay closed", a.calls.Load())
		}
		if h := srv.healthReport().Upstreams[0]; h.State != "closed" || h.ConsecutiveFailures != 0 {
			t.Errorf("a's breaker %s with %d failures; a 404 is no outage", h.State, h.ConsecutiveFailures)
		}
	})
	t.Run("no upstream serves it", func(t *testing.T) {
		a, b := newFakeUpstream(t, notFound), newFakeUpstream(t, htmlNotFound)
		gw, _, _ := newGateway(t, gwOpts{attempts: 3}, a, b)
		res := post(t, gw.URL, "/v1/chat/completions", chatBody)
		msg, typ, code := openAIError(t, res.body)
		if res.status != 404 || code != "model_not_found" || typ != "invalid_request_error" {
			t.Fatalf("%d %s %s, want 404 invalid_request_error model_not_found: %s", res.status, typ, code, msg)
		}
		if !strings.Contains(msg, "a: HTTP 404: The model 'm' does not exist") || !strings.Contains(msg, "b: HTTP 404") {
			t.Errorf("message %q does not say what each upstream answered", msg)
		}
	})
}

// TestClientErrorsInOpenAIShape: an upstream's refusal of the request
// passes back with its status, but an answer clients' SDKs cannot parse
// (an HTML page from a proxy) becomes OpenAI's error shape, and an echoed
// key of the gateway's is taken out.
func TestClientErrorsInOpenAIShape(t *testing.T) {
	t.Run("HTML", func(t *testing.T) {
		a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			_, _ = io.WriteString(w, "<html><body>413 Request Entity Too Large</body></html>")
		})
		gw, _, _ := newGateway(t, gwOpts{}, a)
		res := post(t, gw.URL, "/v1/chat/completions", chatBody)
		msg, typ, code := openAIError(t, res.body)
		if res.status != 413 || typ != "invalid_request_error" || code != "upstream_rejected_request" {
			t.Errorf("%d %s %s, want 413 invalid_request_error upstream_rejected_request", res.status, typ, code)
		}
		if !strings.Contains(msg, "Upstream a refused the request with HTTP 413: <html><body>413 Request Entity Too Large") {
			t.Errorf("message %q", msg)
		}
		if ct := res.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
	})
	t.Run("echoed key", func(t *testing.T) {
		a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":{"message":"bad request from `+r.Header.Get("Authorization")+`"}}`)
		})
		gw, _, _ := newGateway(t, gwOpts{}, a)
		res := post(t, gw.URL, "/v1/chat/completions", chatBody)
		if res.status != 400 || strings.Contains(string(res.body), "upstream-key-a") || !strings.Contains(string(res.body), "[redacted]") {
			t.Errorf("%d %s; want the 400 with the gateway's key redacted", res.status, res.body)
		}
	})
}

func TestClientErrorsPassStraightBack(t *testing.T) {
	const upstreamErr = `{"error":{"message":"Invalid value for 'temperature'","type":"invalid_request_error","param":"temperature","code":null}}`
	a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, upstreamErr)
	})
	b := newFakeUpstream(t, okCompletion)
	gw, _, _ := newGateway(t, gwOpts{attempts: 3}, a, b)
	res := post(t, gw.URL, "/v1/chat/completions", chatBody)
	if res.status != 400 || string(res.body) != upstreamErr {
		t.Fatalf("got %d %s, want the upstream's 400 as it was", res.status, res.body)
	}
	if a.calls.Load() != 1 || b.calls.Load() != 0 {
		t.Errorf("calls a=%d b=%d: a 400 must be neither retried nor sent elsewhere", a.calls.Load(), b.calls.Load())
	}
}

// TestUpstreamAuthFailureFallsBack: an upstream refusing the gateway's own
// key is the operator's problem, not the client's. Another try there would
// be refused too, but the next upstream has its own key; only when no
// upstream is left does the client get a 502 upstream_auth_failed, which
// never carries the upstream's answer (it may quote our key).
func TestUpstreamAuthFailureFallsBack(t *testing.T) {
	refuse := func(code int) func(n int, w http.ResponseWriter, r *http.Request) {
		return func(n int, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_, _ = io.WriteString(w, `{"error":{"message":"Incorrect API key provided: `+r.Header.Get("Authorization")+`"}}`)
		}
	}
	down := func(n int, w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }
	tests := []struct {
		name         string
		upstreams    []func(n int, w http.ResponseWriter, r *http.Request) // a, b, …
		wantStatus   int
		wantUpstream string  // X-Relaygate-Upstream on a 200
		wantCalls    []int32 // per upstream
		wantMessage  []string
		wantCode     string // on a 502; upstream_auth_failed when empty
	}{
		{"401 falls back to a healthy upstream", []func(int, http.ResponseWriter, *http.Request){refuse(401), okCompletion},
			200, "b", []int32{1, 1}, nil, ""},
		{"403 falls back to a healthy upstream", []func(int, http.ResponseWriter, *http.Request){refuse(403), okCompletion},
			200, "b", []int32{1, 1}, nil, ""},
		{"no fallback: 502 upstream_auth_failed", []func(int, http.ResponseWriter, *http.Request){refuse(401)},
			502, "", []int32{1}, []string{"Upstream a refused the gateway's credentials", "a: refused the gateway's credentials (HTTP 401)"}, ""},
		{"every upstream refuses", []func(int, http.ResponseWriter, *http.Request){refuse(401), refuse(403)},
			502, "", []int32{1, 1}, []string{"Upstreams a, b refused", "a: refused the gateway's credentials (HTTP 401); b: refused the gateway's credentials (HTTP 403)"}, ""},
		{"a refusal and an outage: the refusal is named", []func(int, http.ResponseWriter, *http.Request){refuse(401), down},
			502, "", []int32{1, 3}, []string{"Upstream a refused", "b: HTTP 503 (after 3 attempts)"}, ""},
		// A relay out of credit answers 402: the official API behind it
		// must take over, which is the whole point of a fallback.
		{"402 falls back to a healthy upstream", []func(int, http.ResponseWriter, *http.Request){refuse(402), okCompletion},
			200, "b", []int32{1, 1}, nil, ""},
		{"no fallback: 502 upstream_payment_required", []func(int, http.ResponseWriter, *http.Request){refuse(402)},
			502, "", []int32{1}, []string{"Upstream a refused the gateway's account for billing (HTTP 402)", "credit"}, "upstream_payment_required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ups []*fakeUpstream
			for _, h := range tt.upstreams {
				ups = append(ups, newFakeUpstream(t, h))
			}
			// Three attempts per upstream, so a retry of the refusing one
			// would show in its call count.
			gw, srv, m := newGateway(t, gwOpts{attempts: 3}, ups...)
			res := post(t, gw.URL, "/v1/chat/completions", chatBody)
			if res.status != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", res.status, tt.wantStatus, res.body)
			}
			for i, u := range ups {
				if got := u.calls.Load(); got != tt.wantCalls[i] {
					t.Errorf("upstream %c got %d requests, want %d", 'a'+i, got, tt.wantCalls[i])
				}
			}
			if tt.wantStatus == 200 {
				if got := res.header.Get("X-Relaygate-Upstream"); got != tt.wantUpstream {
					t.Errorf("answered by %q, want %q", got, tt.wantUpstream)
				}
				if got := metricValue(t, m, "relaygate_fallbacks_total", map[string]string{"from": "a", "to": "b"}); got != 1 {
					t.Errorf("relaygate_fallbacks_total{a,b} = %v, want 1", got)
				}
			} else {
				wantCode := tt.wantCode
				if wantCode == "" {
					wantCode = "upstream_auth_failed"
				}
				msg, typ, code := openAIError(t, res.body)
				if code != wantCode || typ != "upstream_error" {
					t.Errorf("type %q code %q, want upstream_error %s", typ, code, wantCode)
				}
				for _, want := range tt.wantMessage {
					if !strings.Contains(msg, want) {
						t.Errorf("message %q does not say %q", msg, want)
					}
				}
				if strings.Contains(msg, "upstream-key") || strings.Contains(msg, "Incorrect API key") {
					t.Errorf("message carries the upstream's answer or key: %s", msg)
				}
			}
			// The refusal counts against the refusing upstream, so a
			// revoked key opens its circuit and later requests skip it.
			if got := srv.healthReport().Upstreams[0].ConsecutiveFailures; got != 1 {
				t.Errorf("a's breaker holds %d failures, want 1", got)
			}
			if got := metricValue(t, m, "relaygate_upstream_requests_total", map[string]string{"upstream": "a", "result": "error"}); got != 1 {
				t.Errorf("relaygate_upstream_requests_total{a,error} = %v, want 1", got)
			}
		})
	}
}

// TestRefusalOpensTheCircuitAndStillSaysSo: once refusals have opened an
// upstream's circuit, requests skip it, and the client is still told the
// cause is a refused key (the circuit-open failure wraps it), not a vague
// upstream failure.
func TestRefusalOpensTheCircuitAndStillSaysSo(t *testing.T) {
	a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusUnauthorized) })
	gw, _, _ := newGateway(t, gwOpts{attempts: 3, breakerN: 1, cooldown: "1h"}, a)
	for i := range 3 {
		res := post(t, gw.URL, "/v1/chat/completions", chatBody)
		msg, _, code := openAIError(t, res.body)
		if res.status != 502 || code != "upstream_auth_failed" {
			t.Errorf("request %d: %d %s, want 502 upstream_auth_failed: %s", i, res.status, code, msg)
		}
		if i > 0 && !strings.Contains(msg, "circuit open") {
			t.Errorf("request %d: message %q does not say the circuit is open", i, msg)
		}
	}
	if got := a.calls.Load(); got != 1 {
		t.Errorf("the refusing upstream got %d requests, want 1: its open circuit must be skipped", got)
	}
}

func TestCircuitBreakerSkipsAFailingUpstream(t *testing.T) {
	a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	b := newFakeUpstream(t, okCompletion)
	gw, srv, m := newGateway(t, gwOpts{attempts: 1, breakerN: 3}, a, b)
	for i := 0; i < 10; i++ {
		if res := post(t, gw.URL, "/v1/chat/completions", chatBody); res.status != 200 {
			t.Fatalf("request %d: status %d", i, res.status)
		}
	}
	if got := a.calls.Load(); got != 3 {
		t.Errorf("the failing upstream got %d requests, want 3 (then the circuit opens)", got)
	}
	if got := metricValue(t, m, "relaygate_upstream_up", map[string]string{"upstream": "a"}); got != 0 {
		t.Errorf("relaygate_upstream_up{a} = %v, want 0", got)
	}
	h := srv.healthReport()
	if h.Status != "degraded" || h.Upstreams[0].State != "open" {
		t.Errorf("health = %+v, want degraded with a open", h)
	}
}

// TestReadyRecoversOnceTheCooldownEnds: behind a load balancer that checks
// /ready, a gateway whose every circuit opened gets no request, so no
// request can probe the upstreams. /ready must turn 200 again when the
// cool-down ends, without a request, and let the next one be the probe.
func TestReadyRecoversOnceTheCooldownEnds(t *testing.T) {
	tests := []struct {
		name, cooldown string
		wantReady      bool
	}{
		{"within the cool-down", "1h", false},
		{"after the cool-down", "20ms", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					w.WriteHeader(http.StatusBadGateway)
					return
				}
				okCompletion(n, w, r)
			})
			gw, srv, m := newGateway(t, gwOpts{attempts: 1, breakerN: 1, cooldown: tt.cooldown}, a)
			if res := post(t, gw.URL, "/v1/chat/completions", chatBody); res.status != 502 {
				t.Fatalf("first request: status %d, want 502", res.status)
			}
			ready := func() int { return readyStatus(t, gw.URL) }
			if !tt.wantReady {
				if code := ready(); code != 503 {
					t.Fatalf("/ready = %d with the only circuit open, want 503", code)
				}
				return
			}
			// Only a lower bound on time: /ready turns 200 some time after
			// the cool-down, however slow the machine.
			for deadline := time.Now().Add(30 * time.Second); ready() != 200; time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("/ready never recovered after the cool-down")
				}
			}
			if got := a.calls.Load(); got != 1 {
				t.Errorf("the upstream got %d requests, want 1: /ready must not probe", got)
			}
			// Ready, but no request has seen the upstream recover: the
			// breaker is still open and the up series still says so.
			if h := srv.healthReport(); h.Upstreams[0].State != "open" || !h.Upstreams[0].Available || h.Status != "ok" {
				t.Errorf("health = %+v, want ok with a open but available", h)
			}
			if got := metricValue(t, m, "relaygate_upstream_up", map[string]string{"upstream": "a"}); got != 0 {
				t.Errorf("relaygate_upstream_up{a} = %v before any probe, want 0", got)
			}
			if res := post(t, gw.URL, "/v1/chat/completions", chatBody); res.status != 200 {
				t.Fatalf("probe request: status %d, want 200", res.status)
			}
			if h := srv.healthReport(); h.Upstreams[0].State != "closed" {
				t.Errorf("breaker %s after a good probe, want closed", h.Upstreams[0].State)
			}
			if got := metricValue(t, m, "relaygate_upstream_up", map[string]string{"upstream": "a"}); got != 1 {
				t.Errorf("relaygate_upstream_up{a} = %v after a good probe, want 1", got)
			}
		})
	}
}

// upSeries reads every relaygate_upstream_up series, to tell a series at 0
// from one that does not exist.
func upSeries(t *testing.T, m *metrics.Metrics) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "relaygate_upstream_up" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if lp.GetName() == "upstream" {
					got[lp.GetValue()] = mt.GetGauge().GetValue()
				}
			}
		}
	}
	return got
}

// TestReloadKeepsUpSeriesCurrent: relaygate_upstream_up drives alerts, so a
// reload must drop the series of an upstream it removed or disabled, and a
// breaker of the old config, still used by requests in flight, must not
// bring the series back or overwrite the new breaker's.
func TestReloadKeepsUpSeriesCurrent(t *testing.T) {
	tests := []struct {
		name string
		// reload builds the new config from the upstreams a, b and a spare.
		reload func(t *testing.T, a, b, spare *fakeUpstream) *config.Config
		want   map[string]float64
	}{
		{"b removed", func(t *testing.T, a, _, _ *fakeUpstream) *config.Config {
			return gatewayConfig(t, gwOpts{breakerN: 1}, a)
		}, map[string]float64{"a": 1}},
		{"b disabled", func(t *testing.T, a, b, _ *fakeUpstream) *config.Config {
			cfg := gatewayConfig(t, gwOpts{breakerN: 1}, a, b)
			cfg.Upstreams[1].Disabled = "api_key: environment variable B_KEY is not set"
			return cfg
		}, map[string]float64{"a": 1}},
		{"b moved to another base_url (a new breaker)", func(t *testing.T, a, _, spare *fakeUpstream) *config.Config {
			return gatewayConfig(t, gwOpts{breakerN: 1}, a, spare)
		}, map[string]float64{"a": 1, "b": 1}},
		{"b kept as it was (the same breaker)", func(t *testing.T, a, b, _ *fakeUpstream) *config.Config {
			return gatewayConfig(t, gwOpts{breakerN: 1}, a, b)
		}, map[string]float64{"a": 1, "b": 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b, spare := newFakeUpstream(t, okCompletion), newFakeUpstream(t, okCompletion), newFakeUpstream(t, okCompletion)
			_, srv, m := newGateway(t, gwOpts{breakerN: 1}, a, b)
			if got := upSeries(t, m); got["a"] != 1 || got["b"] != 1 {
				t.Fatalf("before the reload: %v, want a and b at 1", got)
			}
			oldB := srv.state.Load().upstreams[1]
			srv.Reload(tt.reload(t, a, b, spare))
			// A request still running on the old config fails at b: its
			// breaker opens and tells the server.
			oldB.Breaker.Failure(errors.New("HTTP 503"), false)
			if got := upSeries(t, m); !maps.Equal(got, tt.want) {
				t.Errorf("relaygate_upstream_up = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	up := newFakeUpstream(t, okCompletion)
	gw, _, _ := newGateway(t, gwOpts{maxBody: 4096}, up)
	huge := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 5000) + `"}]}`
	tests := []struct {
		name, method, path, body string
		hdr                      []string
		status                   int
		code                     string
	}{
		{"malformed JSON", "POST", "/v1/chat/completions", `{"model":"m",`, nil, 400, "invalid_json"},
		{"not an object", "POST", "/v1/chat/completions", `[1,2]`, nil, 400, "invalid_json"},
		{"model of the wrong type", "POST", "/v1/chat/completions", `{"model":5,"messages":[]}`, nil, 400, "invalid_type"},
		{"stream of the wrong type", "POST", "/v1/chat/completions", `{"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]}`, nil, 400, "invalid_type"},
		{"messages missing", "POST", "/v1/chat/completions", `{"model":"m"}`, nil, 400, "missing_messages"},
		{"model missing", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}]}`, nil, 400, "missing_model"},
		{"embeddings without input", "POST", "/v1/embeddings", `{"model":"m"}`, nil, 400, "missing_input"},
		{"invalid UTF-8", "POST", "/v1/chat/completions", "{\"model\":\"m\xff\",\"messages\":[]}", nil, 400, "invalid_json"},
		{"unknown model", "POST", "/v1/chat/completions", `{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}`, nil, 404, "model_not_found"},
		{"body over the limit", "POST", "/v1/chat/completions", huge, nil, 413, "request_too_large"},
		{"no key", "POST", "/v1/chat/completions", chatBody, []string{"Authorization", ""}, 401, "invalid_api_key"},
		{"wrong key", "POST", "/v1/chat/completions", chatBody, []string{"Authorization", "Bearer sk-wrong"}, 401, "invalid_api_key"},
		{"malformed auth header", "POST", "/v1/chat/completions", chatBody, []string{"Authorization", "Basic Zm9vOmJhcg=="}, 401, "invalid_api_key"},
		{"wrong method", "GET", "/v1/chat/completions", "", nil, 405, "method_not_allowed"},
		{"unknown route", "POST", "/v1/../../etc/passwd", chatBody, nil, 404, "unknown_url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := do(t, tt.method, gw.URL+tt.path, strings.NewReader(tt.body), withKey(tt.hdr...)...)
			if res.status != tt.status {
				t.Fatalf("status %d, want %d: %s", res.status, tt.status, res.body)
			}
			if _, _, code := openAIError(t, res.body); code != tt.code {
				t.Errorf("code %q, want %q", code, tt.code)
			}
		})
	}
	if up.calls.Load() != 0 {
		t.Errorf("bad requests reached the upstream %d times", up.calls.Load())
	}
	// And the gateway still serves.
	if res := post(t, gw.URL, "/v1/chat/completions", chatBody); res.status != 200 {
		t.Errorf("after bad input: status %d", res.status)
	}
}

func TestOversizedBodyRefusedBeforeReading(t *testing.T) {
	up := newFakeUpstream(t, okCompletion)
	gw, _, _ := newGateway(t, gwOpts{maxBody: 4096}, up)
	// Announce 100 MiB and send almost nothing: the answer must come
	// without the gateway waiting for the rest.
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", pr)
	req.ContentLength = 100 << 20
	req.Header.Set("Authorization", "Bearer "+testClientKey)
	go func() { _, _ = pw.Write([]byte(`{"model":"m"`)) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("status %d, want 413", resp.StatusCode)
	}
}

func TestRequestID(t *testing.T) {
	up := newFakeUpstream(t, okCompletion)
	gw, _, _ := newGateway(t, gwOpts{}, up)
	if got := post(t, gw.URL, "/v1/chat/completions", chatBody, "X-Request-Id", "trace-42").header.Get("X-Request-Id"); got != "trace-42" {
		t.Errorf("client id not kept: %q", got)
	}
	got := post(t, gw.URL, "/v1/chat/completions", chatBody, "X-Request-Id", "bad id\twith tab").header.Get("X-Request-Id")
	if got == "" || strings.ContainsAny(got, " \t") {
		t.Errorf("unsafe id not replaced: %q", got)
	}
}

func TestModelRenamedPerUpstream(t *testing.T) {
	a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	b := newFakeUpstream(t, okCompletion)
	gw, _, _ := newGateway(t, gwOpts{attempts: 1, routeA: `a, {upstream: b, model: "official-m"}`}, a, b)
	if res := post(t, gw.URL, "/v1/chat/completions", chatBody); res.status != 200 {
		t.Fatalf("status %d", res.status)
	}
	want := strings.Replace(chatBody, `"model":"m"`, `"model":"official-m"`, 1)
	if got := string(b.lastBody()); got != want {
		t.Errorf("fallback got %s, want %s", got, want)
	}
	if got := string(a.lastBody()); got != chatBody {
		t.Errorf("primary got %s, want the body untouched", got)
	}
}

func TestModelsHealthReady(t *testing.T) {
	up := newFakeUpstream(t, okCompletion)
	gw, srv, _ := newGateway(t, gwOpts{}, up)
	req, _ := http.NewRequest("GET", gw.URL+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer "+testClientKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID, Object string
		} `json:"data"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if list.Object != "list" || len(list.Data) != 1 || list.Data[0].ID != "m" || list.Data[0].Object != "model" {
		t.Errorf("models = %+v", list)
	}
	for path, want := range map[string]int{"/health": 200, "/ready": 200} {
		resp, err := http.Get(gw.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || bytes.Contains(b, []byte("upstream-key")) || bytes.Contains(b, []byte(testClientKey)) {
			t.Errorf("%s: %d %s", path, resp.StatusCode, b)
		}
	}
	srv.Drain()
	if code := readyStatus(t, gw.URL); code != 503 {
		t.Errorf("/ready while draining = %d, want 503", code)
	}
}

// readyStatus is the status code of the gateway's GET /ready.
func readyStatus(t *testing.T, gwURL string) int {
	t.Helper()
	resp, err := http.Get(gwURL + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// readSSE returns the data payloads of a stream, and the error that ended it.
func readSSE(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, d)
		}
	}
	return out, sc.Err()
}

func TestStreaming(t *testing.T) {
	t.Run("events pass through and the added usage event is removed", func(t *testing.T) {
		up := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) { writeSSE(w, r, 3, 0) })
		gw, _, m := newGateway(t, gwOpts{}, up)
		res := post(t, gw.URL, "/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
		if res.status != 200 || !strings.HasPrefix(res.header.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("status %d type %q", res.status, res.header.Get("Content-Type"))
		}
		events, _ := readSSE(bytes.NewReader(res.body))
		if len(events) != 5 || events[4] != "[DONE]" {
			t.Fatalf("events = %q, want 3 content, finish, [DONE]", events)
		}
		if bytes.Contains(res.body, []byte(`"usage"`)) {
			t.Errorf("the usage event the client did not ask for reached it")
		}
		if !bytes.Contains(up.lastBody(), []byte(`"stream_options":{"include_usage":true}`)) {
			t.Errorf("upstream was not asked for usage: %s", up.lastBody())
		}
		if got := metricValue(t, m, "relaygate_tokens_total", map[string]string{"model": "m", "kind": "completion"}); got != 4 {
			t.Errorf("completion tokens = %v, want 4 from the upstream's usage", got)
		}
	})
	t.Run("usage kept when the client asked for it", func(t *testing.T) {
		up := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) { writeSSE(w, r, 2, 0) })
		gw, _, _ := newGateway(t, gwOpts{}, up)
		body := `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
		res := post(t, gw.URL, "/v1/chat/completions", body)
		if !bytes.Contains(res.body, []byte(`"usage":{"prompt_tokens":7`)) {
			t.Errorf("usage event missing: %s", res.body)
		}
		if string(up.lastBody()) != body {
			t.Errorf("body changed although the client asked for usage: %s", up.lastBody())
		}
	})
	t.Run("the /stream endpoint always streams", func(t *testing.T) {
		up := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) { writeSSE(w, r, 1, 0) })
		gw, _, _ := newGateway(t, gwOpts{}, up)
		res := post(t, gw.URL, "/v1/chat/completions/stream", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
		if !strings.HasPrefix(res.header.Get("Content-Type"), "text/event-stream") || !bytes.Contains(up.lastBody(), []byte(`"stream":true`)) {
			t.Errorf("not streamed: %s / upstream body %s", res.header, up.lastBody())
		}
	})
	t.Run("cut before the first event falls back", func(t *testing.T) {
		a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			cutConnection(w)
		})
		b := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) { writeSSE(w, r, 2, 0) })
		gw, _, _ := newGateway(t, gwOpts{attempts: 1}, a, b)
		res := post(t, gw.URL, "/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
		events, err := readSSE(bytes.NewReader(res.body))
		if err != nil || res.header.Get("X-Relaygate-Upstream") != "b" || events[len(events)-1] != "[DONE]" {
			t.Errorf("want a whole stream from b, got upstream %q events %q err %v", res.header.Get("X-Relaygate-Upstream"), events, err)
		}
	})
	t.Run("stall before the first event falls back", func(t *testing.T) {
		a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		})
		b := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) { writeSSE(w, r, 2, 0) })
		gw, _, _ := newGateway(t, gwOpts{attempts: 1, idle: "200ms"}, a, b)
		res := post(t, gw.URL, "/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
		if res.header.Get("X-Relaygate-Upstream") != "b" {
			t.Errorf("want the answer from b, got %q", res.header.Get("X-Relaygate-Upstream"))
		}
	})
	t.Run("cut after the first event is not retried and the client sees an error", func(t *testing.T) {
		a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n")
			w.(http.Flusher).Flush()
			cutConnection(w)
		})
		b := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) { writeSSE(w, r, 2, 0) })
		gw, _, _ := newGateway(t, gwOpts{attempts: 3}, a, b)
		resp := openStream(t, gw.URL, `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
		events, rerr := readSSE(resp.Body)
		resp.Body.Close()
		if rerr == nil {
			t.Errorf("the stream ended cleanly; the client must see it broke")
		}
		if len(events) < 2 || !strings.Contains(events[len(events)-1], "stream_interrupted") {
			t.Fatalf("events = %q, want the partial event then an error event", events)
		}
		// The chain was not exhausted: the message names the upstream
		// whose stream broke, not "every upstream failed".
		msg, _, _ := openAIError(t, []byte(events[len(events)-1]))
		if !strings.Contains(msg, "upstream a broke after it started") || strings.Contains(msg, "every upstream failed") {
			t.Errorf("error message %q, want it to name upstream a and say its stream broke after it started", msg)
		}
		if a.calls.Load() != 1 || b.calls.Load() != 0 {
			t.Errorf("calls a=%d b=%d: nothing may be retried after the first byte", a.calls.Load(), b.calls.Load())
		}
	})
}

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	cancelled := make(chan struct{})
	up := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // silent upstream: only the gateway can end this
		close(cancelled)
	})
	gw, _, _ := newGateway(t, gwOpts{idle: "1h", timeout: "1h"}, up)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+testClientKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	if !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first line %q", line)
	}
	cancel()
	resp.Body.Close()
	testenv.Receive(t, cancelled, 30*time.Second, "the upstream request being cancelled after the client went away")
}

func TestAdminExposure(t *testing.T) {
	const adminKey = "admin-key-0123456789abcdef"
	get := func(t *testing.T, h http.Handler, path, key string) (int, string) {
		t.Helper()
		req := httptest.NewRequest("GET", path, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	t.Run("key required for metrics and health details", func(t *testing.T) {
		up := newFakeUpstream(t, okCompletion)
		_, srv, _ := newGateway(t, gwOpts{extra: "admin: {key: " + adminKey + "}\n"}, up)
		if code, _ := get(t, srv, "/metrics", ""); code != 401 {
			t.Errorf("/metrics without the admin key: %d, want 401", code)
		}
		if code, body := get(t, srv, "/metrics", adminKey); code != 200 || !strings.Contains(body, "relaygate_upstream_up") {
			t.Errorf("/metrics with the key: %d", code)
		}
		if code, body := get(t, srv, "/health", ""); code != 200 || strings.Contains(body, "upstreams") {
			t.Errorf("/health without the key must say only the status: %d %s", code, body)
		}
		if _, body := get(t, srv, "/health", adminKey); !strings.Contains(body, `"upstreams"`) {
			t.Errorf("/health with the key has no details: %s", body)
		}
	})
	t.Run("separate admin listener", func(t *testing.T) {
		up := newFakeUpstream(t, okCompletion)
		_, srv, _ := newGateway(t, gwOpts{extra: "admin: {listen: \"127.0.0.1:0\"}\n"}, up)
		if code, _ := get(t, srv, "/metrics", ""); code != 404 {
			t.Errorf("/metrics on the main listener: %d, want 404", code)
		}
		if code, body := get(t, srv, "/health", ""); code != 200 || strings.Contains(body, "upstreams") {
			t.Errorf("/health on the main listener must say only the status: %s", body)
		}
		if code, _ := get(t, srv.AdminHandler(), "/metrics", ""); code != 200 {
			t.Errorf("/metrics on the admin listener: %d", code)
		}
		if code, _ := get(t, srv, "/ready", ""); code != 200 {
			t.Errorf("/ready must stay on the main listener: %d", code)
		}
	})
}

// TestClientHangingUpAfterDoneIsSuccess: go-openai closes the connection as
// soon as it reads [DONE]; that is a whole answer, not a client gone.
func TestClientHangingUpAfterDoneIsSuccess(t *testing.T) {
	for _, done := range []string{"data: [DONE]", "data:[DONE]"} {
		t.Run(done, func(t *testing.T) {
			up := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n"+done+"\n\n")
				w.(http.Flusher).Flush()
				<-r.Context().Done() // the upstream keeps its end open a while
			})
			gw, _, m := newGateway(t, gwOpts{}, up)
			resp := openStream(t, gw.URL, `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
			rd := bufio.NewReader(resp.Body)
			for {
				line, err := rd.ReadString('\n')
				if err != nil {
					t.Fatalf("stream ended before [DONE]: %v", err)
				}
				if strings.HasPrefix(line, done) {
					break
				}
			}
			resp.Body.Close()
			ok := func() float64 {
				return metricValue(t, m, "relaygate_requests_total", map[string]string{"model": "m", "upstream": "a", "code": "200"})
			}
			for deadline := time.Now().Add(10 * time.Second); ok() == 0 && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
			if ok() != 1 {
				t.Errorf("relaygate_requests_total{code=200} = %v; a stream read to [DONE] must count as answered", ok())
			}
			if got := metricValue(t, m, "relaygate_requests_total", map[string]string{"code": "499"}); got != 0 {
				t.Errorf("counted as 499 (client gone) %v times", got)
			}
		})
	}
}

// TestDoneInContentIsNotTheEnd: a model may well write "data: [DONE]" in
// its answer (explaining SSE, say). A stream cut after that is still cut:
// the client must see it broke, not a clean end.
func TestDoneInContentIsNotTheEnd(t *testing.T) {
	up := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"streams end with data: [DONE]\n\nthen"}}]}`+"\n\n")
		w.(http.Flusher).Flush()
		cutConnection(w)
	})
	gw, _, m := newGateway(t, gwOpts{attempts: 1}, up)
	resp := openStream(t, gw.URL, `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	events, rerr := readSSE(resp.Body)
	resp.Body.Close()
	if rerr == nil || len(events) < 2 || !strings.Contains(events[len(events)-1], "stream_interrupted") {
		t.Errorf("events %q, read error %v; want the partial event, a stream_interrupted event and a broken connection", events, rerr)
	}
	waitMetric(t, m, "relaygate_requests_total", map[string]string{"model": "m", "upstream": "a", "code": "502"}, 1)
}

func TestHasDone(t *testing.T) {
	for in, want := range map[string]bool{
		"data: [DONE]\n\n":                          true,
		"data:[DONE]\n\n":                           true,
		"data: [DONE]\r\n\r\n":                      true,
		"data: {\"a\":1}\n\ndata: [DONE]\n\n":       true,
		`data: {"content":"data: [DONE]"}` + "\n\n": false,
		"data: [DONE] \n\n":                         false,
		": [DONE]\n\n":                              false,
		"data: {\"a\":1}\n\n":                       false,
	} {
		if got := hasDone([]byte(in)); got != want {
			t.Errorf("hasDone(%q) = %v, want %v", in, got, want)
		}
	}
}

// TestStreamProbeClosesTheBreakerAtItsFirstEvent: after the cool-down the
// next request is the breaker's probe. When it is a long stream, the
// upstream has proved itself with its first event; other requests must not
// skip it until the stream ends.
func TestStreamProbeClosesTheBreakerAtItsFirstEvent(t *testing.T) {
	release := make(chan struct{})
	a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		switch n {
		case 1:
			w.WriteHeader(http.StatusInternalServerError) // opens the circuit
		case 2: // the probe: one event, then it holds the stream open
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			_, _ = io.WriteString(w, "data: [DONE]\n\n")
		default:
			okCompletion(n, w, r)
		}
	})
	gw, _, _ := newGateway(t, gwOpts{attempts: 1, breakerN: 1, cooldown: "20ms"}, a)
	if res := post(t, gw.URL, "/v1/chat/completions", chatBody); res.status != 502 {
		t.Fatalf("first request: status %d, want 502", res.status)
	}
	time.Sleep(50 * time.Millisecond) // past the cool-down; only a lower bound matters

	resp := openStream(t, gw.URL, `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		t.Fatalf("reading the probe's first event: %v", err)
	}
	// The probe stream is still open.
	if res := post(t, gw.URL, "/v1/chat/completions", chatBody); res.status != 200 {
		t.Errorf("a request during the probe stream: status %d: %s", res.status, res.body)
	}
	close(release)
}

// TestStreamAnsweredWhole: some servers ignore "stream" and answer a whole
// chat.completion. The client asked for events and gets events; an answer
// that is no chat completion counts as this upstream failing.
func TestStreamAnsweredWhole(t *testing.T) {
	streamReq := `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	t.Run("a chat completion becomes events", func(t *testing.T) {
		a := newFakeUpstream(t, okCompletion)
		gw, _, m := newGateway(t, gwOpts{}, a)
		resp := openStream(t, gw.URL, streamReq)
		events, err := readSSE(resp.Body)
		resp.Body.Close()
		if err != nil || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("Content-Type %q, read error %v", resp.Header.Get("Content-Type"), err)
		}
		if len(events) < 2 || events[len(events)-1] != "[DONE]" || !strings.Contains(strings.Join(events, ""), "chat.completion.chunk") {
			t.Errorf("events %q, want chat.completion.chunk events ending with [DONE]", events)
		}
		waitMetric(t, m, "relaygate_requests_total", map[string]string{"model": "m", "upstream": "a", "code": "200"}, 1)
	})
	t.Run("anything else falls back", func(t *testing.T) {
		a := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"status":"ok"}`)
		})
		b := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) { writeSSE(w, r, 2, 0) })
		gw, _, _ := newGateway(t, gwOpts{attempts: 3}, a, b)
		res := post(t, gw.URL, "/v1/chat/completions", streamReq)
		if res.status != 200 || res.header.Get("X-Relaygate-Upstream") != "b" || a.calls.Load() != 1 {
			t.Errorf("status %d from %q after %d calls to a; want 200 from b after one call to a", res.status, res.header.Get("X-Relaygate-Upstream"), a.calls.Load())
		}
	})
}

// TestClientLeavingAfterTheAnswerIsStillCharged: a client that hangs up as
// soon as it has what it wants (here the usage event, before [DONE]) was
// served, and the upstream bills the tokens: they count, cost included.
func TestClientLeavingAfterTheAnswerIsStillCharged(t *testing.T) {
	up := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":500}}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // no [DONE] before the client leaves
	})
	gw, _, m := newGateway(t, gwOpts{}, up)
	resp := openStream(t, gw.URL, `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`)
	rd := bufio.NewReader(resp.Body)
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended before the usage event: %v", err)
		}
		if strings.Contains(line, `"usage"`) {
			break
		}
	}
	resp.Body.Close()
	// The handler's end counts the request, then its tokens, then its cost
	// (price 1 and 2 dollars per million tokens, helpers_test.go): once the
	// cost is in, so is the rest.
	cost := func() float64 {
		return metricValue(t, m, "relaygate_cost_usd_total", map[string]string{"model": "m", "upstream": "a"})
	}
	for deadline := time.Now().Add(10 * time.Second); cost() == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if got := cost(); math.Abs(got-0.002) > 1e-12 {
		t.Errorf("cost %v, want 0.002", got)
	}
	if got := metricValue(t, m, "relaygate_tokens_total", map[string]string{"model": "m", "kind": "prompt"}); got != 1000 {
		t.Errorf("prompt tokens %v, want 1000", got)
	}
	if got := metricValue(t, m, "relaygate_requests_total", map[string]string{"model": "m", "upstream": "a", "code": "499"}); got != 1 {
		t.Errorf("relaygate_requests_total{a,499} = %v, want 1", got)
	}
}

// TestClientThatStopsReading: a client that takes no more bytes (its
// receive window shut, or gone without closing) must not hold the handler
// and the upstream stream for ever: after stream_idle_timeout without
// progress the gateway gives up on it and cancels the upstream request.
func TestClientThatStopsReading(t *testing.T) {
	cancelled := make(chan struct{})
	up := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		event := []byte("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + strings.Repeat("x", 32<<10) + "\"}}]}\n\n")
		for {
			if _, err := w.Write(event); err != nil {
				break
			}
			w.(http.Flusher).Flush()
			if r.Context().Err() != nil {
				break
			}
		}
		<-r.Context().Done()
		close(cancelled)
	})
	gw, _, m := newGateway(t, gwOpts{attempts: 1, idle: "300ms"}, up)
	conn, err := net.Dial("tcp", strings.TrimPrefix(gw.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", testClientKey, len(body), body)
	// … and never reads a byte.
	// A failure guard, far above the 300ms: without the cancel the handler
	// waits on a client that reads nothing.
	testenv.Receive(t, cancelled, 60*time.Second, "the upstream request being cancelled")
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if metricValue(t, m, "relaygate_inflight_requests", nil) == 0 {
			return
		}
	}
	t.Errorf("relaygate_inflight_requests = %v after the client was given up", metricValue(t, m, "relaygate_inflight_requests", nil))
}
