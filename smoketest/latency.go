package smoketest

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// sample is one latency request's timings.
type sample struct {
	total, gateway, upstream time.Duration
	timed                    bool // the answer carried Server-Timing
	err                      string
}

func (r *runner) checkLatency(ctx context.Context, s *Step) {
	budget := r.opts.Outputs.LatencyBudgetP95Ms
	n, c := r.opts.Requests, r.opts.Concurrency
	body, _ := json.Marshal(map[string]any{
		"model":                 r.model,
		"messages":              []map[string]string{{"role": "user", "content": "Relaygate smoke test (latency). Reply with one short sentence."}},
		"max_completion_tokens": maxTokens,
	})
	// The cache is bypassed so every request measures the upstream path;
	// a cache hit would flatter the percentiles.
	header := http.Header{"X-Relaygate-Cache": {"bypass"}}

	samples := make([]sample, n)
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := 0
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				samples[i] = r.timeRequest(ctx, body, header)
				mu.Lock()
				done++
				if d := done; d == n || d%max(1, n/5) == 0 {
					fmt.Fprintf(r.opts.Progress, "smoke: %-18s %d/%d requests\n", CheckLatency, d, n)
				}
				mu.Unlock()
			}
		}()
	}
	sent := 0
feed:
	for ; sent < n; sent++ {
		select {
		case jobs <- sent:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	samples = samples[:sent]

	st := summarize(samples, c, float64(budget))
	r.report.Latency = st
	r.okRequests += len(samples) - st.Errors
	detail := fmt.Sprintf("%d requests at concurrency %d: p50 %s, p95 %s, p99 %s, %d errors; p95 budget %s; gateway overhead p95 %s, upstream p95 %s",
		len(samples), c, formatMS(st.Total.P50), formatMS(st.Total.P95), formatMS(st.Total.P99), st.Errors,
		formatMS(st.BudgetP95MS), formatMS(st.Gateway.P95), formatMS(st.Upstream.P95))
	switch {
	case sent < n:
		s.fail(fmt.Sprintf("only %d of %d requests were sent before the %s limit: %s", sent, n, r.opts.LatencyTimeout, detail),
			"the gateway or its upstream is far slower than the budget: see the completion check, or lower -requests")
	case budget <= 0:
		s.fail(detail, "the stack exports no latencyBudgetP95Ms; set it in the stack config (milliseconds)")
	case st.Errors > 0:
		s.fail(detail+"; errors: "+strings.Join(st.ErrorSamples, "; "),
			"requests failed under light concurrent load: 429 means the rate limit is below the smoke test's load, 502/504 an upstream "+
				"failing (health check), connection errors a load balancer or host limit")
	case st.Total.P95 > st.BudgetP95MS:
		s.fail(detail, latencyHint(st))
	default:
		s.passf("%s", detail)
	}
}

// timeRequest sends one request and reads its Server-Timing header, which
// splits the gateway's own time from its wait on the upstream.
func (r *runner) timeRequest(ctx context.Context, body []byte, header http.Header) sample {
	t0 := time.Now()
	code, h, respBody, err := r.post(ctx, "/v1/chat/completions", body, header)
	sm := sample{total: time.Since(t0)}
	switch {
	case err != nil:
		detail, _ := r.reachError(ctx, "the gateway", err)
		sm.err = detail
	case code != http.StatusOK:
		sm.err = fmt.Sprintf("HTTP %d: %s", code, clip(errorMessage(respBody), 120))
	default:
		sm.gateway, sm.upstream, sm.timed = parseServerTiming(h.Get("Server-Timing"))
	}
	return sm
}

// parseServerTiming reads "relaygate;dur=1.2, upstream;dur=840.5" (ms).
func parseServerTiming(v string) (gateway, upstream time.Duration, ok bool) {
	var gotG, gotU bool
	for _, metric := range strings.Split(v, ",") {
		parts := strings.Split(strings.TrimSpace(metric), ";")
		name := strings.TrimSpace(parts[0])
		for _, p := range parts[1:] {
			k, val, found := strings.Cut(strings.TrimSpace(p), "=")
			if !found || k != "dur" {
				continue
			}
			f, err := strconv.ParseFloat(val, 64)
			if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
				continue
			}
			d := time.Duration(f * float64(time.Millisecond))
			switch name {
			case "relaygate":
				gateway, gotG = d, true
			case "upstream":
				upstream, gotU = d, true
			}
		}
	}
	return gateway, upstream, gotG && gotU
}

func summarize(samples []sample, concurrency int, budgetMS float64) *LatencyStats {
	st := &LatencyStats{Requests: len(samples), Concurrency: concurrency, BudgetP95MS: budgetMS}
	var total, gw, up, netw []time.Duration
	seen := map[string]bool{}
	for _, s := range samples {
		if s.err != "" {
			st.Errors++
			if !seen[s.err] && len(st.ErrorSamples) < 3 {
				seen[s.err] = true
				st.ErrorSamples = append(st.ErrorSamples, s.err)
			}
			continue
		}
		total = append(total, s.total)
		if s.timed {
			gw = append(gw, s.gateway)
			up = append(up, s.upstream)
			netw = append(netw, max(0, s.total-s.gateway-s.upstream))
		}
	}
	st.Total, st.Gateway, st.Upstream, st.Network = percentiles(total), percentiles(gw), percentiles(up), percentiles(netw)
	return st
}

// percentiles uses the nearest-rank method: every value reported is one
// that was measured.
func percentiles(ds []time.Duration) Percentiles {
	if len(ds) == 0 {
		return Percentiles{}
	}
	sorted := append([]time.Duration(nil), ds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	rank := func(p float64) float64 {
		i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
		return ms(sorted[max(0, min(i, len(sorted)-1))])
	}
	return Percentiles{P50: rank(50), P95: rank(95), P99: rank(99), Max: ms(sorted[len(sorted)-1])}
}

// latencyHint names where the time went: the upstream, the gateway itself
// or the way between the client and the gateway.
func latencyHint(st *LatencyStats) string {
	over := fmt.Sprintf("p95 %s is over the %s budget. ", formatMS(st.Total.P95), formatMS(st.BudgetP95MS))
	switch {
	case st.Upstream.P95 == 0 && st.Gateway.P95 == 0:
		return over + "The answers carried no Server-Timing to say where the time went; a proxy may strip it"
	case st.Upstream.P95 >= st.Gateway.P95 && st.Upstream.P95 >= st.Network.P95:
		return over + fmt.Sprintf("The upstream takes most of it (p95 %s): move a faster upstream first in the model's route, "+
			"check the upstream's status page, or raise latencyBudgetP95Ms if this is the model's normal speed", formatMS(st.Upstream.P95))
	case st.Gateway.P95 >= st.Network.P95:
		return over + fmt.Sprintf("The gateway itself takes most of it (p95 %s): check CPU on the host, relaygate_inflight_requests, "+
			"and Redis latency (cache and rate-limit calls wait on it)", formatMS(st.Gateway.P95))
	default:
		return over + fmt.Sprintf("The way between here and the gateway takes most of it (p95 %s): run the smoke test from near the stack, "+
			"or check the load balancer and TLS set-up", formatMS(st.Network.P95))
	}
}
