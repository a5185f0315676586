package migration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/app"
	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// reportStack is a gateway built by app.New in front of two simulators, a
// fast one and one that always fails, with the cache on a real Redis.
type reportStack struct {
	app *app.App
	gw  *httptest.Server
}

const reportConfig = `
listen: "127.0.0.1:0"
upstreams:
  - {name: fast, base_url: %q, timeout: 10s, connect_timeout: 2s}
  - {name: broken, base_url: %q, timeout: 10s, connect_timeout: 2s}
models:
  - name: direct
    route: [fast]
    price: {input_per_mtok: 1, output_per_mtok: 2}
    reference_price: {input_per_mtok: 4, output_per_mtok: 8}
  - name: fallback
    route: [broken, fast]
    price: {input_per_mtok: 1, output_per_mtok: 2}
    reference_price: {input_per_mtok: 4, output_per_mtok: 8}
retry: {attempts: 1}
circuit_breaker: {failures: 100000, cooldown: 1s}
cache: {redis_url: %q, ttl: 10m, timeout: 500ms}
gpu: {interval: 1h}
log: {level: error, requests: false}
`

// fastLatency is the fast simulator's; every answer waits at least this.
const fastLatency = 20 * time.Millisecond

func newReportStack(t *testing.T) *reportStack {
	t.Helper()
	redis := testenv.StartRedis(t)
	fast := startSim(t, upstreamsim.Config{Latency: fastLatency, CompletionTokens: 20, TokensPerChunk: 4})
	broken := startSim(t, upstreamsim.Config{FailureRate: 1})
	cfg := parseTestConfig(t, fmt.Sprintf(reportConfig, fast, broken, redis.URL), nil)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := app.New(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	gw := httptest.NewServer(a.Handler())
	t.Cleanup(gw.Close)
	return &reportStack{app: a, gw: gw}
}

// answer is what a test needs of a gateway's answer.
type answer struct {
	prompt, completion int    // usage of a whole (not streamed) answer
	cache              string // X-Cache
}

// chat is one client request; deterministic ones (temperature 0) are
// cacheable. It fails the test unless the gateway answers 200.
func (s *reportStack) chat(t *testing.T, model, content string, deterministic, stream bool) answer {
	t.Helper()
	req := map[string]any{"model": model, "stream": stream,
		"messages": []map[string]string{{"role": "user", "content": content}}}
	if deterministic {
		req["temperature"] = 0
	}
	b, _ := json.Marshal(req)
	resp, err := http.Post(s.gw.URL+"/v1/chat/completions", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Errorf("POST %s: %v", model, err)
		return answer{}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("POST %s: %d %s %v", model, resp.StatusCode, raw, err)
		return answer{}
	}
	var body struct {
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if !stream {
		_ = json.Unmarshal(raw, &body)
	}
	return answer{prompt: body.Usage.PromptTokens, completion: body.Usage.CompletionTokens, cache: resp.Header.Get("X-Cache")}
}

// TestReportReadsTheGatewayFromPrometheus runs a known load through a real
// gateway scraped by a real Prometheus, then checks the report's figures
// against the load: requests, fallbacks, attempts by result, tokens, cost,
// savings and the cache.
func TestReportReadsTheGatewayFromPrometheus(t *testing.T) {
	const (
		direct    = 40 // to "direct", half streamed
		fellBack  = 20 // to "fallback": broken fails, fast answers
		hits      = 10 // the cached question again
		misses    = 5  // new deterministic questions
		cachedQ   = "what is cached?"
		scrapeGap = 250 * time.Millisecond
	)
	s := newReportStack(t)

	// Warm-up: every series the load touches exists before Prometheus's
	// first scrape, so increase() over the window counts exactly the load
	// (a counter's first sample is its baseline).
	s.chat(t, "direct", "warm-up", false, false)
	s.chat(t, "direct", "warm-up stream", false, true)
	s.chat(t, "fallback", "warm-up", false, false)
	// The gateway stores an answer after sending it, so the next identical
	// request can still miss: ask until it hits (a bounded loop, not a wait).
	var hit answer
	for i := 0; hit.cache != "HIT"; i++ {
		if i == 100 || t.Failed() {
			t.Fatalf("the cached question never hit the cache: %+v", hit)
		}
		hit = s.chat(t, "direct", cachedQ, true, false)
	}
	hitPrompt, hitCompletion := hit.prompt, hit.completion

	promStarted := time.Now()
	prom := testenv.StartPrometheus(t, testenv.PrometheusOptions{
		Targets: []string{strings.TrimPrefix(s.gw.URL, "http://")}, ScrapeInterval: scrapeGap})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := prom.WaitForSeries(ctx, `relaygate_fallbacks_total{from="broken",to="fast"} == 1`); err != nil {
		t.Fatal(err)
	}
	firstSeen := time.Now()

	tokens := func(model, kind string) float64 {
		return testenv.MetricValue(t, s.app.Metrics.Registry, "relaygate_tokens_total", map[string]string{"model": model, "kind": kind})
	}
	promptBefore, completionBefore := tokens("direct", "prompt"), tokens("direct", "completion")
	fbPromptBefore, fbCompletionBefore := tokens("fallback", "prompt"), tokens("fallback", "completion")
	jobs := make(chan func(), 100)
	for i := range direct {
		jobs <- func() { s.chat(t, "direct", fmt.Sprintf("question %d", i), false, i%2 == 1) }
	}
	for i := range fellBack {
		jobs <- func() { s.chat(t, "fallback", fmt.Sprintf("question %d", i), false, false) }
	}
	for range hits {
		jobs <- func() {
			if a := s.chat(t, "direct", cachedQ, true, false); a.cache != "HIT" {
				t.Errorf("the cached question got X-Cache %q", a.cache)
			}
		}
	}
	for i := range misses {
		jobs <- func() { s.chat(t, "direct", fmt.Sprintf("new deterministic question %d", i), true, false) }
	}
	close(jobs)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for job := range jobs {
				job()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	loadEnd := time.Now()
	promptDelta, completionDelta := tokens("direct", "prompt")-promptBefore, tokens("direct", "completion")-completionBefore
	fbPromptDelta, fbCompletionDelta := tokens("fallback", "prompt")-fbPromptBefore, tokens("fallback", "completion")-fbCompletionBefore

	// The report ends at a scrape a few scrapes after the load, so the
	// window's end needs no extrapolation and its start's is small.
	vec, err := prom.WaitForSeries(ctx, fmt.Sprintf(`timestamp(relaygate_inflight_requests) > %f`,
		float64(loadEnd.Add(8*scrapeGap).UnixMilli())/1000))
	if err != nil {
		t.Fatal(err)
	}
	end := time.UnixMilli(int64(math.Round(float64(vec[0].Value) * 1000)))
	if _, err := prom.WaitForSeries(ctx, fmt.Sprintf(`relaygate_fallbacks_total{from="broken",to="fast"} == %d`, fellBack+1)); err != nil {
		t.Fatal(err)
	}

	res, err := Report(ctx, ReportOptions{API: prom.API, Source: prom.URL, Window: time.Hour, End: end, Config: nil})
	if err != nil {
		t.Fatal(err)
	}
	cfgRes, err := Report(ctx, ReportOptions{API: prom.API, Source: prom.URL, Window: time.Hour, End: end,
		Config: parseTestConfig(t, fmt.Sprintf(reportConfig, "http://127.0.0.1:1", "http://127.0.0.1:1", "redis://127.0.0.1:1"), nil)})
	if err != nil {
		t.Fatal(err)
	}

	// Counts are increase() over the window: at least the load, and above it
	// only by Prometheus's extrapolation towards the window's start, half a
	// scrape interval over the seconds sampled.
	count := func(name string, got Figure, want float64) {
		t.Helper()
		if !got.Valid() || float64(got) < want*0.999 || float64(got) > want*1.15 {
			t.Errorf("%s = %v, want %v (+15%% extrapolation at most)", name, got, want)
		}
	}
	near := func(name string, got Figure, want, rel float64) {
		t.Helper()
		if !got.Valid() || math.Abs(float64(got)-want) > rel*math.Abs(want) {
			t.Errorf("%s = %v, want %v ±%.0f%%", name, got, want, rel*100)
		}
	}
	inBucketRange := func(name string, p Figure, lowest time.Duration) {
		t.Helper()
		// histogram_quantile interpolates inside the bucket the latency
		// falls in: the lower bound is the bucket's, the upper generous.
		if !p.Valid() || float64(p) < bucketBelow(lowest) || float64(p) > (lowest+generous).Seconds() {
			t.Errorf("%s = %v, want at least %v (bucket below %v)", name, p, bucketBelow(lowest), lowest)
		}
	}

	t.Run("upstreams", func(t *testing.T) {
		ups := map[string]UpstreamReport{}
		for _, u := range res.Upstreams {
			ups[u.Name] = u
		}
		b, f := ups["broken"], ups["fast"]
		count("broken attempts", b.Attempts, fellBack)
		count("broken errors", b.Errors, fellBack)
		count("broken fell back", b.FellBack, fellBack)
		if b.Availability != 0 || b.Success != 0 || b.Answers != 0 {
			t.Errorf("broken: availability %v, %v successes, %v answers; it always fails", b.Availability, b.Success, b.Answers)
		}
		served := float64(direct + fellBack + misses)
		count("fast successes", f.Success, served)
		count("fast answered", f.Answers, served)
		if f.Availability != 1 || f.Errors != 0 || f.Timeouts != 0 || f.FellBack != 0 {
			t.Errorf("fast: availability %v, %v errors, %v timeouts, %v fell back; it never fails", f.Availability, f.Errors, f.Timeouts, f.FellBack)
		}
		inBucketRange("fast attempt p50", f.Latency.P50, fastLatency)
		inBucketRange("fast attempt p99", f.Latency.P99, fastLatency)
		count("fast cost", f.CostUSD, ((promptDelta+fbPromptDelta)*1+(completionDelta+fbCompletionDelta)*2)/1e6)
	})

	t.Run("models", func(t *testing.T) {
		ms := map[string]ModelReport{}
		for _, m := range res.Models {
			ms[m.Name] = m
		}
		d, fb := ms["direct"], ms["fallback"]
		count("direct requests", d.Requests, direct+hits+misses)
		count("direct cache hits", d.CacheHits, hits)
		count("fallback requests", fb.Requests, fellBack)
		for _, m := range []ModelReport{d, fb, res.Total} {
			if m.Availability != 1 || m.ServerErrors != 0 {
				t.Errorf("%s: availability %v with %v server errors; every request was answered", m.Name, m.Availability, m.ServerErrors)
			}
		}
		inBucketRange("direct p50", d.Latency.P50, fastLatency) // most went upstream
		inBucketRange("fallback p50", fb.Latency.P50, fastLatency)
		inBucketRange("direct ttft p50", d.TTFT.P50, fastLatency)
		count("direct prompt tokens", d.PromptTokens, promptDelta)
		count("direct completion tokens", d.CompletionTokens, completionDelta)
		near("direct $/Mtok", d.CostPerMTok, (promptDelta+2*completionDelta)/(promptDelta+completionDelta), 0.03)
		if d.ReferencePerMTok.Valid() || d.CacheSavingsUSD.Valid() {
			t.Errorf("without a config the reference and the savings split are unknown: %v, %v", d.ReferencePerMTok, d.CacheSavingsUSD)
		}
		// Savings: the reference price of upstream answers minus their
		// cost, plus the whole reference price of each cache hit.
		hitRef := (float64(hitPrompt)*4 + float64(hitCompletion)*8) / 1e6
		wantSaved := (promptDelta*3+completionDelta*6)/1e6 + hits*hitRef
		count("direct savings", d.SavingsUSD, wantSaved)
		near("direct savings share", d.SavingsShare, float64(d.SavingsUSD)/float64(d.CostUSD+d.SavingsUSD), 1e-9)
		if got, want := float64(d.MonthlyCostUSD), float64(d.CostUSD)*float64(month)/float64(res.Covered); math.Abs(got-want) > 1e-9*want {
			t.Errorf("monthly cost %v, want the window's %v scaled to a month of %v covered: %v", got, d.CostUSD, res.Covered, want)
		}

		cd := cfgRes.Models[0]
		if cd.Name != "direct" {
			t.Fatalf("models %+v", cfgRes.Models)
		}
		near("direct reference $/Mtok", cd.ReferencePerMTok,
			(4*float64(cd.PromptTokens)+8*float64(cd.CompletionTokens))/float64(cd.PromptTokens+cd.CompletionTokens), 1e-9)
		near("direct cache savings", cd.CacheSavingsUSD, hits*hitRef, 0.15)
		near("direct routing savings", cd.RoutingSavingsUSD, (promptDelta*3+completionDelta*6)/1e6, 0.15)
		near("savings split adds up", cd.RoutingSavingsUSD+cd.CacheSavingsUSD, float64(cd.SavingsUSD), 1e-9)
	})

	t.Run("cache and fallbacks", func(t *testing.T) {
		c := res.Cache
		count("cache hits", c.Hits, hits)
		count("cache misses", c.Misses, misses)
		count("cache bypassed", c.Bypassed, direct+fellBack)
		near("hit ratio", c.HitRatio, float64(hits)/float64(hits+misses), 0.05)
		if c.SavedUSD.Valid() {
			t.Errorf("without a config the cache's savings are unknown, got %v", c.SavedUSD)
		}
		near("cache saved with the config", cfgRes.Cache.SavedUSD, hits*(float64(hitPrompt)*4+float64(hitCompletion)*8)/1e6, 0.15)

		if len(res.Fallbacks) != 1 || res.Fallbacks[0].From != "broken" || res.Fallbacks[0].To != "fast" {
			t.Fatalf("fallbacks %+v", res.Fallbacks)
		}
		count("fallbacks", res.Fallbacks[0].Count, fellBack)
		near("fallback share", res.Fallbacks[0].Share, float64(fellBack)/float64(direct+fellBack+hits+misses), 0.05)
	})

	t.Run("window", func(t *testing.T) {
		// The window covers from Prometheus's first scrape, which happened
		// after it started and before the first series was seen.
		if res.Start.Before(promStarted.Truncate(time.Millisecond)) || res.Start.After(firstSeen) ||
			!res.End.Equal(end.UTC()) || res.Covered != res.End.Sub(res.Start) {
			t.Errorf("covered %v from %v to %v; Prometheus started %v, first series seen %v",
				res.Covered, res.Start, res.End, promStarted, firstSeen)
		}
		if !strings.Contains(res.Summary(), "of the 1h window only") {
			t.Errorf("summary does not say the data is shorter than the window: %s", res.Summary())
		}
	})

	t.Run("outputs", func(t *testing.T) {
		var md bytes.Buffer
		if err := cfgRes.WriteMarkdown(&md); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"# Relaygate report: last 1h", "## Requests, latency, cost and savings by model",
			"| direct |", "| all models |", "## Upstreams", "| broken |", "## Cache", "## Fallbacks", "| broken | fast |"} {
			if !strings.Contains(md.String(), want) {
				t.Errorf("markdown lacks %q:\n%s", want, md.String())
			}
		}
		var text, js bytes.Buffer
		if err := cfgRes.WriteText(&text); err != nil || !strings.Contains(text.String(), "UPSTREAM") {
			t.Errorf("text: %v\n%s", err, text.String())
		}
		if err := cfgRes.WriteJSON(&js); err != nil {
			t.Fatal(err)
		}
		var back ReportResult
		if err := json.Unmarshal(js.Bytes(), &back); err != nil {
			t.Fatalf("JSON does not read back: %v", err)
		}
		if back.Cache.Hits != cfgRes.Cache.Hits || back.CoveredSeconds != cfgRes.Covered.Seconds() {
			t.Errorf("JSON round trip: %+v", back.Cache)
		}
		chart := tempPath(t, "report.png")
		if err := cfgRes.WriteChart(chart); err != nil {
			t.Fatal(err)
		}
		checkPNG(t, chart)
	})

	t.Run("a filter that matches nothing is no data", func(t *testing.T) {
		_, err := Report(ctx, ReportOptions{API: prom.API, Window: time.Hour, End: end, Match: `job="not-the-gateway"`})
		if !errors.Is(err, ErrNoData) {
			t.Errorf("err = %v, want ErrNoData", err)
		}
	})
}

// bucketBelow is the upper bound of the histogram bucket below the one d
// falls in: the least histogram_quantile can answer for latencies of at
// least d.
func bucketBelow(d time.Duration) float64 {
	lo := 0.0
	for _, b := range metrics.Buckets {
		if b > d.Seconds() {
			break
		}
		lo = b
	}
	return lo
}
