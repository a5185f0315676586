package gateway

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/budget"
	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/testenv"
)

// BenchmarkKeys is the hot-path cost of named keys, their limits and
// budgets: the same chat request through the handler (in-memory upstream)
// with a plain client_keys key (off), a named key with an allow-list
// only (keys: no Redis), and a named key whose key and team have RPM, TPM
// and budgets in a real Redis on loopback (budgets: one round trip to
// admit, one to charge after the answer is flushed). It reports the p50
// and p99 of one request's handler time beside ns/op, and answered-p50:
// until the answer was flushed to the client (the charge comes after).
func BenchmarkKeys(b *testing.B) {
	rds := testenv.StartRedis(b)
	const secret = "sk-bench-named-key-0123456789"
	cases := []struct{ name, yaml string }{
		{"off", `client_keys: ["` + secret + `"]`},
		{"keys", `keys: [{name: bench, key: "` + secret + `", models: [m]}]`},
		{"budgets", `teams: [{name: t, rpm: 1000000000, tpm: 1000000000000, budget: {usd: 1000000000, period: month}}]
keys: [{name: bench, team: t, key: "` + secret + `", models: [m], rpm: 1000000000, tpm: 1000000000000, budget: {usd: 1000000000, period: day}}]`},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			doc := c.yaml + `
cache: {redis_url: "` + rds.URL + `"}
upstreams:
  - {name: a, base_url: "http://127.0.0.1:1/v1", api_key: "upstream-key", apis: [chat]}
models:
  - {name: m, route: [a], price: {input_per_mtok: 1, output_per_mtok: 2}}
log: {requests: false}
`
			cfg, err := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
			if err != nil {
				b.Fatal(err)
			}
			e, err := budget.New(budget.Options{URL: rds.URL, Timeout: time.Second})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = e.Close() })
			srv := New(cfg, Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)), Metrics: metrics.New(), Budgets: e})
			srv.state.Load().upstreams[0].Transport = &cannedTransport{body: []byte(completionJSON), header: http.Header{"Content-Type": {"application/json"}}}
			body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
			took := make([]time.Duration, 0, b.N)
			answered := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				req := httptest.NewRequest("POST", "/v1/chat/completions", bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+secret)
				rec := &flushRecorder{ResponseRecorder: httptest.NewRecorder()}
				srv.ServeHTTP(rec, req)
				end := time.Now()
				took = append(took, end.Sub(t0))
				if rec.flushed.IsZero() {
					rec.flushed = end
				}
				answered = append(answered, rec.flushed.Sub(t0))
				if rec.Code != 200 {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
			b.StopTimer()
			slices.Sort(took)
			slices.Sort(answered)
			b.ReportMetric(float64(took[len(took)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(took[len(took)*99/100].Nanoseconds()), "p99-ns")
			b.ReportMetric(float64(answered[len(answered)/2].Nanoseconds()), "answered-p50-ns")
		})
	}
}

// flushRecorder notes when the handler first flushed its answer.
type flushRecorder struct {
	*httptest.ResponseRecorder
	flushed time.Time
}

func (f *flushRecorder) Flush() {
	if f.flushed.IsZero() {
		f.flushed = time.Now()
	}
	f.ResponseRecorder.Flush()
}
