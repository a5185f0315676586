package reliability

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// Soak bounds: after the first sample (pools and caches warm), the heap may
// grow by half plus 16 MiB and the goroutine count by 50; a leak of a few
// bytes or one goroutine per request crosses them within minutes at the
// soak's rate, while GC timing and connection churn stay well inside.
const (
	soakHeapFactor  = 1.5
	soakHeapSlack   = 16 << 20
	soakGoroutines  = 50
	soakDefaultRate = 200 // requests per second
)

// TestSoak runs a steady mixed load (answers, streams, cache hits, a
// flapping primary with a fallback, clients leaving mid-stream) for the
// duration in RELAYGATE_SOAK, sampling heap and goroutines each minute (or
// five times over a shorter run). It fails on any failed request or when
// memory or goroutines grow past the bounds above. `make bench` runs it:
//
//	RELAYGATE_SOAK=10m go test -run TestSoak -timeout 30m ./service/internal/reliability/
//
// RELAYGATE_SOAK_RPS sets the rate (default 200 requests per second).
func TestSoak(t *testing.T) {
	raw := os.Getenv("RELAYGATE_SOAK")
	if raw == "" {
		t.Skip("set RELAYGATE_SOAK to a duration (e.g. 10m) to run the soak test")
	}
	d, err := time.ParseDuration(raw)
	if err != nil || d <= 0 {
		t.Fatalf("RELAYGATE_SOAK=%q is not a positive duration", raw)
	}
	rate := soakDefaultRate
	if v := os.Getenv("RELAYGATE_SOAK_RPS"); v != "" {
		if rate, err = strconv.Atoi(v); err != nil || rate <= 0 {
			t.Fatalf("RELAYGATE_SOAK_RPS=%q is not a positive number", v)
		}
	}
	every := min(time.Minute, d/5)

	r := testenv.StartRedis(t)
	primary := startSim(t, upstreamsim.Config{FailureRate: 0.1, CompletionTokens: 24, TokensPerChunk: 2, ChunkDelay: time.Millisecond})
	fallback := startSim(t, upstreamsim.Config{CompletionTokens: 24, TokensPerChunk: 2, ChunkDelay: time.Millisecond})
	gw := startGateway(t, gatewaySpec{
		upstreams:       []upstreamSpec{{name: "primary", url: primary.base, timeout: "10s"}, {name: "fallback", url: fallback.base}},
		route:           []string{"primary", "fallback"},
		breakerFailures: 5, breakerCooldown: "100ms",
		extra: fmt.Sprintf("cache: {redis_url: %q, ttl: 1m}\nrate_limit: {rpm: 100000000, tpm: 1000000000}\nlog: {requests: false}\n", r.URL),
	}.yaml(), nil)

	const workers = 64
	c := newClient(t, workers)
	jobs := make(chan int, workers)
	var res tally
	var skipped atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				res.add(soakRequest(c, gw.URL, i))
			}
		})
	}

	type sample struct {
		at         time.Duration
		heap       uint64
		goroutines int
		requests   int
	}
	var samples []sample
	take := func(at time.Duration) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		s := sample{at, ms.HeapAlloc, runtime.NumGoroutine(), res.total()}
		samples = append(samples, s)
		t.Logf("%6s: %7d requests, heap %6.1f MiB, %4d goroutines", at.Round(time.Second), s.requests, float64(s.heap)/(1<<20), s.goroutines)
	}

	start := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	next := every
	for i := 0; ; i++ {
		now := <-tick.C
		el := now.Sub(start)
		if el >= next {
			take(el)
			next += every
		}
		if el >= d {
			break
		}
		select {
		case jobs <- i:
		default:
			skipped.Add(1) // every worker busy: the gateway is slower than the rate
		}
	}
	close(jobs)
	wg.Wait()
	c.Transport.(*http.Transport).CloseIdleConnections()

	if n, ok := res.total(), res.get("ok")+res.get("ok, left mid-stream"); ok != n {
		t.Errorf("%d of %d requests failed: %s", n-ok, n, &res)
	}
	if len(samples) < 2 {
		t.Fatalf("only %d samples: run longer", len(samples))
	}
	first, last := samples[0], samples[len(samples)-1]
	if limit := uint64(float64(first.heap)*soakHeapFactor) + soakHeapSlack; last.heap > limit {
		t.Errorf("heap grew from %d to %d MiB over the soak (bound %d MiB)", first.heap>>20, last.heap>>20, limit>>20)
	}
	if last.goroutines > first.goroutines+soakGoroutines {
		t.Errorf("goroutines grew from %d to %d over the soak (bound +%d)", first.goroutines, last.goroutines, soakGoroutines)
	}
	t.Logf("%d requests in %s (%d ticks skipped with every worker busy): %s", res.total(), d, skipped.Load(), &res)
}

// soakRequest is request i of the soak's mix: a quarter cacheable answers,
// a quarter fresh answers, half streams, of which one in ten is abandoned
// after its first event.
func soakRequest(c *http.Client, baseURL string, i int) (string, reply) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if i%20 == 1 {
		resp, err := c.Do(chat(ctx, baseURL, clientKey, "m", true, fmt.Sprintf("leaving %d", i)))
		if err != nil {
			return "failed", reply{err: err}
		}
		defer resp.Body.Close()
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || resp.StatusCode != http.StatusOK || !strings.HasPrefix(line, "data: ") {
			return "failed", reply{status: resp.StatusCode, err: err, body: []byte(line)}
		}
		return "ok, left mid-stream", reply{status: resp.StatusCode}
	}
	r := do(c, mixedRequest(ctx, baseURL, clientKey, i))
	return mixedJudge(i, r), r
}
