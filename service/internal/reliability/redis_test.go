package reliability

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// redisLoadKey is the client key of load request i: the load is spread
// evenly over many keys so that none of them reaches the rate limit.
func redisLoadKey(i, keys int) string {
	return fmt.Sprintf("sk-reliability-load-%03d-0123456789", i%keys)
}

// mixedRequest is request i of a Redis run: cacheable and not, streamed and
// not, so both the cache and the rate limiter are on every path.
func mixedRequest(ctx context.Context, baseURL, key string, i int) *http.Request {
	var body string
	switch i % 4 {
	case 0: // deterministic: stored, then hit
		body = fmt.Sprintf(`{"model":"m","temperature":0,"messages":[{"role":"user","content":"cached %d"}]}`, i%50)
	case 1:
		body = fmt.Sprintf(`{"model":"m","stream":true,"messages":[{"role":"user","content":"stream %d"}]}`, i)
	case 2:
		body = fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":"fresh %d"}]}`, i)
	default: // a deterministic stream: replayed from a stored whole answer when there is one
		body = fmt.Sprintf(`{"model":"m","temperature":0,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"cached %d"}]}`, i%50)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		panic(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	return req
}

func mixedJudge(i int, r reply) string {
	check := wholeChat
	if i%2 == 1 {
		check = wholeStream
	}
	if err := check(r); err != nil {
		return "failed"
	}
	return "ok"
}

// TestRedisKilledUnderLoad kills Redis three times under load and starts
// it again each time. The cache and the rate limiter both live in it; both
// must fail open: no client request fails or is refused, the limiter counts
// what it could not check, and both come back by themselves.
func TestRedisKilledUnderLoad(t *testing.T) {
	r := testenv.StartRedis(t)
	sim := startSim(t, simAnswer(upstreamsim.Config{}))
	const keys = 40
	const rpm = 600
	n, workers := volume(faultRequests), 48
	if n/keys >= rpm {
		t.Fatalf("%d requests over %d keys would reach the rate limit", n, keys)
	}
	// The checks after the load have keys of their own, so the load's
	// requests do not count against them.
	const cacheProbeKey, limitProbeKey = "sk-reliability-cache-probe-0123456789", "sk-reliability-limit-probe-0123456789"
	clientKeys := []string{cacheProbeKey, limitProbeKey}
	for k := range keys {
		clientKeys = append(clientKeys, redisLoadKey(k, keys))
	}
	spec := viaSim(sim)
	spec.keys = clientKeys
	spec.extra = fmt.Sprintf("cache: {redis_url: %q, ttl: 1m, timeout: 100ms}\nrate_limit: {rpm: %d, tpm: 100000000}\n",
		r.URL, rpm)
	gw := startGateway(t, spec.yaml(), nil)

	l := startLoad(t, newClient(t, workers), loadSpec{requests: n, workers: workers,
		request: func(ctx context.Context, i int) *http.Request {
			return mixedRequest(ctx, gw.URL, redisLoadKey(i, keys), i)
		},
		judge: mixedJudge,
	})
	for cycle := range 3 {
		l.waitFor(t, n*(2+5*cycle)/20)
		r.Stop()
		l.waitFor(t, n*(5+5*cycle)/20)
		r.Restart()
	}
	res := l.wait(t)
	res.onlyOK(t, "with Redis killed and restarted")

	reg := gw.app.Metrics.Registry
	cacheErrors := testenv.MetricValue(t, reg, "relaygate_cache_requests_total", map[string]string{"result": "error"})
	limitErrors := testenv.MetricValue(t, reg, "relaygate_rate_limit_errors_total", nil)
	limited := testenv.MetricValue(t, reg, "relaygate_rate_limited_total", nil)
	if cacheErrors == 0 || limitErrors == 0 {
		t.Errorf("the outages were not counted: cache errors %v, rate-limit errors %v", cacheErrors, limitErrors)
	}
	if limited != 0 {
		t.Errorf("%v requests were refused by the rate limiter, which no key should have reached", limited)
	}

	// The cache comes back by itself: a deterministic request is stored,
	// then hit.
	c := newClient(t, 1)
	det := func() reply { return do(c, mixedRequest(context.Background(), gw.URL, cacheProbeKey, 0)) }
	waitUntil(t, "the cache answers again after Redis came back", func() bool {
		det()
		if det().header.Get("X-Cache") == "HIT" {
			return true
		}
		// The cache's Redis client backs off for up to 5s after an
		// outage; a slower poll keeps this key far from its limit.
		time.Sleep(50 * time.Millisecond)
		return false
	})
	// So does the rate limiter: a key that goes past its limit is refused
	// again. Requests it let through while its Redis client was still
	// backing off are the fail-open at work, not an error.
	// Bounded by time, not count: a fast machine can send any number of
	// requests inside the limiter's back-off (up to 5s), all rightly let
	// through.
	var refused reply
	deadline := time.Now().Add(guard)
	sent := 0
	for i := 0; refused.status == 0 && time.Now().Before(deadline); i++ {
		sent++
		if got := do(c, chat(context.Background(), gw.URL, limitProbeKey, "m", false, "probe")); got.status == http.StatusTooManyRequests {
			refused = got
		} else if err := wholeChat(got); err != nil {
			t.Fatalf("probe %d: %v", i, err)
		}
	}
	if refused.status == 0 {
		t.Fatalf("no request was rate limited after Redis came back, over %d requests in %s at rpm %d", sent, guard, rpm)
	}
	if e, err := openAIError(refused); err != nil || e.Code != "rate_limit_exceeded" || refused.header.Get("Retry-After") == "" {
		t.Errorf("429 not in OpenAI's shape with Retry-After (%v): %s", err, refused)
	}
	var health struct {
		Cache     struct{ Up bool } `json:"cache"`
		RateLimit struct{ Up bool } `json:"rate_limit"`
	}
	hr := do(c, mustRequest(t, http.MethodGet, gw.URL+"/health", ""))
	if err := json.Unmarshal(hr.body, &health); err != nil || !health.Cache.Up || !health.RateLimit.Up {
		t.Errorf("/health after recovery (%v): %s", err, hr)
	}
	t.Logf("%d requests, %d failed, Redis killed 3 times; cache errors %v, rate-limit checks failed open %v, upstream answered %d",
		n, n-res.get("ok"), cacheErrors, limitErrors, sim.Stats().Requests[upstreamsim.EndpointChatCompletions])
}

func mustRequest(t testing.TB, method, url, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return req
}
