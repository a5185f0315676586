package gateway

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
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
// budgets admits beside the upstream call (admission: overlap), which
// here answers at once, so the answer still waits for Redis's verdict;
// budgets-strict admits before it. BenchmarkKeysPaced measures both
// against an upstream that takes time, as real ones do.
func BenchmarkKeys(b *testing.B) {
	rds := testenv.StartRedis(b)
	const secret = "sk-bench-named-key-0123456789"
	cases := []struct{ name, yaml string }{
		{"off", `client_keys: ["` + secret + `"]`},
		{"keys", `keys: [{name: bench, key: "` + secret + `", models: [m]}]`},
		{"budgets", `teams: [{name: t, rpm: 1000000000, tpm: 1000000000000, budget: {usd: 1000000000, period: month}}]
keys: [{name: bench, team: t, key: "` + secret + `", models: [m], rpm: 1000000000, tpm: 1000000000000, budget: {usd: 1000000000, period: day}}]`},
		{"budgets-strict", `teams: [{name: t, rpm: 1000000000, tpm: 1000000000000, budget: {usd: 1000000000, period: month}}]
keys: [{name: bench, team: t, key: "` + secret + `", models: [m], rpm: 1000000000, tpm: 1000000000000, budget: {usd: 1000000000, period: day}, admission: strict}]`},
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

// delayedTransport answers like cannedTransport after lat, or fails when
// the request's context ends first: an upstream that takes time.
type delayedTransport struct {
	cannedTransport
	lat time.Duration
}

func (d *delayedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if d.lat > 0 {
		t := time.NewTimer(d.lat)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return nil, r.Context().Err()
		}
	}
	return d.cannedTransport.RoundTrip(r)
}

// BenchmarkKeysPaced is the cost of keys and budgets as a client sees it
// over real HTTP on loopback: the same gateway with a plain client_keys
// key (off), and with a named key whose key and team have RPM, TPM and
// budgets in a real Redis, admitted beside the upstream call (overlap)
// or before it (strict). Requests are sent open-loop at a paced 2,000
// per second, the cases interleaved in rounds so that they share the
// machine's state; each reports its p50 and p99 and what it adds to
// off's. Then each case's saturation throughput: closed-loop clients for
// a fixed time, and its ratio to off's. The upstream is in memory and
// answers after 0 (the worst case for overlap: nothing to overlap) or
// 2 ms. Run with -benchtime=1x: one iteration is one whole measurement.
func BenchmarkKeysPaced(b *testing.B) {
	rds := testenv.StartRedis(b)
	const secret = "sk-bench-named-key-0123456789"
	limits := `teams: [{name: t, rpm: 1000000000, tpm: 1000000000000, budget: {usd: 1000000000, period: month}}]
keys: [{name: bench, team: t, key: "` + secret + `", models: [m], rpm: 1000000000, tpm: 1000000000000, budget: {usd: 1000000000, period: day}, admission: %s}]`
	cases := []struct{ name, yaml string }{
		{"off", `client_keys: ["` + secret + `"]`},
		{"overlap", fmt.Sprintf(limits, config.AdmissionOverlap)},
		{"strict", fmt.Sprintf(limits, config.AdmissionStrict)},
	}
	const (
		rate     = 2000
		rounds   = 4
		perRound = time.Second
		satFor   = 2 * time.Second
		clients  = 16
	)
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 0}, Timeout: 10 * time.Second}
	b.Cleanup(hc.CloseIdleConnections)
	send := func(url string) (time.Duration, error) {
		req, _ := http.NewRequest(http.MethodPost, url+"/v1/chat/completions", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+secret)
		req.Header.Set("Content-Type", "application/json")
		t0 := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return 0, fmt.Errorf("status %d", resp.StatusCode)
		}
		return time.Since(t0), nil
	}
	for _, lat := range []time.Duration{0, 2 * time.Millisecond} {
		urls := make([]string, len(cases))
		for i, c := range cases {
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
			srv.state.Load().upstreams[0].Transport = &delayedTransport{lat: lat,
				cannedTransport: cannedTransport{body: []byte(completionJSON), header: http.Header{"Content-Type": {"application/json"}}}}
			hs := httptest.NewServer(srv)
			b.Cleanup(hs.Close)
			urls[i] = hs.URL
		}
		b.Run("upstream="+lat.String(), func(b *testing.B) {
			for range b.N {
				took := make([][]time.Duration, len(cases))
				var failed atomic.Int64
				for round := 0; round < rounds; round++ {
					for i := range cases {
						var mu sync.Mutex
						var wg sync.WaitGroup
						start := time.Now()
						for n := 0; n < int(perRound.Seconds()*rate); n++ {
							if wait := time.Until(start.Add(time.Duration(n) * time.Second / rate)); wait > 0 {
								time.Sleep(wait)
							}
							wg.Add(1)
							go func() {
								defer wg.Done()
								d, err := send(urls[i])
								if err != nil {
									failed.Add(1)
									return
								}
								mu.Lock()
								took[i] = append(took[i], d)
								mu.Unlock()
							}()
						}
						wg.Wait()
					}
				}
				if n := failed.Load(); n > 0 {
					b.Fatalf("%d requests failed", n)
				}
				pct := func(d []time.Duration, p int) float64 {
					slices.Sort(d)
					return float64(d[len(d)*p/100].Microseconds())
				}
				p50off, p99off := pct(took[0], 50), pct(took[0], 99)
				for i, c := range cases {
					p50, p99 := pct(took[i], 50), pct(took[i], 99)
					b.ReportMetric(p50, c.name+"-p50-µs")
					b.ReportMetric(p99, c.name+"-p99-µs")
					if i > 0 {
						b.ReportMetric(p50-p50off, c.name+"-added-p50-µs")
						b.ReportMetric(p99-p99off, c.name+"-added-p99-µs")
					}
				}
				sat := make([]float64, len(cases))
				for i := range cases {
					var done atomic.Int64
					var wg sync.WaitGroup
					end := time.Now().Add(satFor)
					for range clients {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for time.Now().Before(end) {
								if _, err := send(urls[i]); err != nil {
									failed.Add(1)
									return
								}
								done.Add(1)
							}
						}()
					}
					wg.Wait()
					sat[i] = float64(done.Load()) / satFor.Seconds()
				}
				if n := failed.Load(); n > 0 {
					b.Fatalf("%d requests failed at saturation", n)
				}
				for i, c := range cases {
					b.ReportMetric(sat[i], c.name+"-sat-rps")
					if i > 0 {
						b.ReportMetric(sat[i]/sat[0], c.name+"-sat-ratio")
					}
				}
			}
		})
	}
}
