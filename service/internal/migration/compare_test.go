package migration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// generous bounds latency from above: the simulator guarantees the lower
// bound (it sleeps at least its latency), but a shared CI machine can add
// any amount on top, so the upper bound only catches a unit error.
const generous = 3 * time.Second

// TestCompareMeasuresWhatSimulatorsWereSetTo runs compare against two
// simulators set apart in latency and failure rate and checks each figure
// against the setting.
func TestCompareMeasuresWhatSimulatorsWereSetTo(t *testing.T) {
	const (
		n            = 200
		failureRate  = 0.2
		answerTokens = 24
		monthly      = 1e9
	)
	slowLatency, fastLatency := 40*time.Millisecond, 5*time.Millisecond
	slow := startSim(t, upstreamsim.Config{Latency: slowLatency, FailureRate: failureRate, Seed: 7,
		CompletionTokens: answerTokens, TokensPerChunk: 4})
	fast := startSim(t, upstreamsim.Config{Latency: fastLatency, CompletionTokens: answerTokens, TokensPerChunk: 4,
		Models: []string{"m-fast"}}) // only the route entry's model id is accepted
	cfg := parseTestConfig(t, fmt.Sprintf(`
upstreams:
  - {name: slow, base_url: %q, timeout: 20s}
  - {name: fast, base_url: %q, timeout: 20s}
models:
  - name: m
    route:
      - {upstream: fast, model: m-fast, price: {input_per_mtok: 1, output_per_mtok: 2}}
      - slow
    price: {input_per_mtok: 3, output_per_mtok: 6}
    reference_price: {input_per_mtok: 4, output_per_mtok: 8}
`, slow, fast), nil)

	var progress []Progress
	res, err := Compare(context.Background(), cfg, CompareOptions{
		Model: "m", Upstreams: []string{"slow", "fast"}, Prompts: testPrompts(t), PromptSource: "test",
		Requests: n, Concurrency: 4, Stream: StreamMixed, MonthlyTokens: monthly,
		Progress: func(p Progress) { progress = append(progress, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Upstreams) != 2 || res.Upstreams[0].Name != "slow" || res.Upstreams[1].Name != "fast" {
		t.Fatalf("upstreams %+v, want slow then fast", res.Upstreams)
	}
	s, f := res.Upstreams[0], res.Upstreams[1]

	t.Run("counts and failure rates", func(t *testing.T) {
		for _, u := range []UpstreamResult{s, f} {
			if u.Sent != n || u.OK+u.Errors+u.Timeouts != n {
				t.Errorf("%s: sent %d = ok %d + errors %d + timeouts %d, want %d", u.Name, u.Sent, u.OK, u.Errors, u.Timeouts, n)
			}
			if u.Timeouts != 0 {
				t.Errorf("%s: %d timeouts", u.Name, u.Timeouts)
			}
		}
		// Four standard deviations of a binomial sample: a correct
		// measurement falls outside once in about 15,000 seeds.
		tol := 4 * math.Sqrt(failureRate*(1-failureRate)/n)
		if got := float64(s.ErrorRate); math.Abs(got-failureRate) > tol {
			t.Errorf("slow error rate %.3f, set to %.2f (±%.3f)", got, failureRate, tol)
		}
		if f.Errors != 0 || float64(f.Availability) != 1 {
			t.Errorf("fast: %d errors, availability %v; it never fails", f.Errors, f.Availability)
		}
		if len(s.Failures) != 1 || !strings.HasPrefix(s.Failures[0].Reason, "HTTP 503") || s.Failures[0].Count != s.Errors {
			t.Errorf("slow failures %+v, want %d× HTTP 503", s.Failures, s.Errors)
		}
	})

	t.Run("latency", func(t *testing.T) {
		for _, c := range []struct {
			u   UpstreamResult
			set time.Duration
		}{{s, slowLatency}, {f, fastLatency}} {
			for name, p := range map[string]Figure{"p50": c.u.Latency.P50, "p95": c.u.Latency.P95, "p99": c.u.Latency.P99,
				"ttft p50": c.u.TTFT.P50, "ttft p95": c.u.TTFT.P95} {
				if got := time.Duration(float64(p) * float64(time.Second)); !p.Valid() || got < c.set || got > c.set+generous {
					t.Errorf("%s %s = %v, set to %v", c.u.Name, name, got, c.set)
				}
			}
			if !(c.u.Latency.P50 <= c.u.Latency.P95 && c.u.Latency.P95 <= c.u.Latency.P99) {
				t.Errorf("%s percentiles out of order: %+v", c.u.Name, c.u.Latency)
			}
		}
		// Mixed mode streams every other request; only successful ones count.
		if f.StreamedOK != n/2 {
			t.Errorf("fast streamed %d successfully, want %d", f.StreamedOK, n/2)
		}
		if len(s.ttfts) != s.StreamedOK || len(s.latencies) != s.OK {
			t.Errorf("slow samples: %d ttft for %d streams, %d latencies for %d ok", len(s.ttfts), s.StreamedOK, len(s.latencies), s.OK)
		}
		if !f.TokensPerSecond.Valid() || f.TokensPerSecond <= 0 {
			t.Errorf("fast tokens/s = %v", f.TokensPerSecond)
		}
	})

	t.Run("tokens and cost", func(t *testing.T) {
		for _, c := range []struct {
			u       UpstreamResult
			in, out float64
			model   string
		}{{s, 3, 6, "m"}, {f, 1, 2, "m-fast"}} {
			u := c.u
			if u.Model != c.model {
				t.Errorf("%s was sent model %q, want %q", u.Name, u.Model, c.model)
			}
			if u.CompletionTokens != int64(answerTokens*u.OK) || u.PromptTokens <= 0 || u.NoUsage != 0 {
				t.Errorf("%s tokens: %d prompt, %d completion for %d answers (%d without usage), want %d completion",
					u.Name, u.PromptTokens, u.CompletionTokens, u.OK, u.NoUsage, answerTokens*u.OK)
			}
			p, cpl := float64(u.PromptTokens), float64(u.CompletionTokens)
			wantCost := (p*c.in + cpl*c.out) / 1e6
			wantPerM := wantCost * 1e6 / (p + cpl)
			wantRef := (p*4 + cpl*8) / (p + cpl)
			checks := []struct {
				name      string
				got, want float64
			}{
				{"cost", float64(u.CostUSD), wantCost},
				{"$/Mtok", float64(u.CostPerMTok), wantPerM},
				{"reference $/Mtok", float64(u.ReferencePerMTok), wantRef},
				{"monthly", float64(u.MonthlyCostUSD), wantPerM * monthly / 1e6},
				{"monthly reference", float64(u.MonthlyReferenceUSD), wantRef * monthly / 1e6},
				{"monthly savings", float64(u.MonthlySavingsUSD), (wantRef - wantPerM) * monthly / 1e6},
				{"savings share", float64(u.SavingsShare), (wantRef - wantPerM) / wantRef},
			}
			for _, ch := range checks {
				if math.Abs(ch.got-ch.want) > 1e-9*math.Max(1, math.Abs(ch.want)) {
					t.Errorf("%s %s = %v, want %v", u.Name, ch.name, ch.got, ch.want)
				}
			}
			if wantPerM < c.in || wantPerM > c.out {
				t.Errorf("%s $/Mtok %v outside its prices %v..%v", u.Name, wantPerM, c.in, c.out)
			}
		}
		// The same prompts went to both: the prompt tokens of an answer
		// depend only on its prompt, so the averages sit close.
		if s.OK > 0 {
			ps, pf := float64(s.PromptTokens)/float64(s.OK), float64(f.PromptTokens)/float64(f.OK)
			if math.Abs(ps-pf)/pf > 0.5 {
				t.Errorf("prompt tokens per answer: slow %.1f, fast %.1f", ps, pf)
			}
		}
	})

	t.Run("progress", func(t *testing.T) {
		if len(progress) != 2*n {
			t.Fatalf("%d progress calls, want %d", len(progress), 2*n)
		}
		last := progress[len(progress)-1]
		if last.Done != 2*n || last.Total != 2*n || len(last.Upstreams) != 2 || last.Upstreams[0].Failed != s.Errors {
			t.Errorf("last progress %+v", last)
		}
		for i := 1; i < len(progress); i++ {
			if progress[i].Done != progress[i-1].Done+1 {
				t.Fatalf("progress went %d then %d", progress[i-1].Done, progress[i].Done)
			}
		}
	})

	t.Run("outputs", func(t *testing.T) {
		var text bytes.Buffer
		if err := res.Table().WriteText(&text); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"slow", "fast", "P95", "TTFT P99", "$/MTOK", "HTTP 503", "1B tokens a month"} {
			if !strings.Contains(text.String(), want) {
				t.Errorf("table lacks %q:\n%s", want, text.String())
			}
		}
		var md bytes.Buffer
		if err := res.Table().WriteMarkdown(&md, 2); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(md.String(), "| UPSTREAM | SENT |") || !strings.Contains(md.String(), "| slow | 200 |") {
			t.Errorf("markdown:\n%s", md.String())
		}

		var js bytes.Buffer
		if err := res.WriteJSON(&js); err != nil {
			t.Fatal(err)
		}
		var back CompareResult
		if err := json.Unmarshal(js.Bytes(), &back); err != nil {
			t.Fatalf("JSON does not read back: %v\n%s", err, js.String())
		}
		if back.Upstreams[0].Errors != s.Errors || back.Upstreams[1].Latency.P95 != f.Latency.P95 ||
			back.Upstreams[1].CostPerMTok != f.CostPerMTok {
			t.Errorf("JSON round trip changed figures: %+v", back.Upstreams)
		}

		chart := tempPath(t, "compare.png")
		if err := res.WriteChart(chart); err != nil {
			t.Fatal(err)
		}
		checkPNG(t, chart)
	})
}

// TestCompareReportsBrokenUpstreams: a wrong key, a refused connection, a
// hanging upstream, a cut stream and an unset key are rows of the table,
// each with its cause, and never a failed run.
func TestCompareReportsBrokenUpstreams(t *testing.T) {
	const (
		n        = 4
		wrongKey = "sk-wrong-secret-value-0123456789"
	)
	good := startSim(t, upstreamsim.Config{})
	keyed := startSim(t, upstreamsim.Config{APIKey: "sk-the-right-key-0123456789"})
	hangs := startSim(t, upstreamsim.Config{HangRate: 1})
	cuts := startSim(t, upstreamsim.Config{CutRate: 1, CutAfterChunks: 2, CompletionTokens: 10})
	// An upstream that ends its stream cleanly but early: no finish_reason.
	early := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, `data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"half an"}}]}`+"\n\n")
	}))
	t.Cleanup(early.Close)
	cfg := parseTestConfig(t, fmt.Sprintf(`
client_keys: ["${GATEWAY_KEY_NOT_SET}"]
upstreams:
  - {name: good, base_url: %q}
  - {name: wrongkey, base_url: %q, api_key: %q}
  - {name: refused, base_url: %q, connect_timeout: 5s}
  - {name: hangs, base_url: %q, timeout: 300ms, connect_timeout: 300ms}
  - {name: cuts, base_url: %q}
  - {name: early, base_url: %q}
  - {name: nokey, base_url: %q, api_key: "${NOKEY_API_KEY}"}
models:
  - {name: m, route: [good, wrongkey, refused, hangs, cuts, early, nokey], price: {input_per_mtok: 1, output_per_mtok: 1}}
`, good, keyed, wrongKey, closedURL(t), hangs, cuts, early.URL, good), nil)

	res, err := Compare(context.Background(), cfg, CompareOptions{
		Model: "m", Prompts: testPrompts(t), PromptSource: "test", Requests: n, Concurrency: 2, Stream: StreamOn,
	})
	if err != nil {
		t.Fatalf("a broken upstream must not fail the run: %v", err)
	}
	rows := map[string]UpstreamResult{}
	for _, u := range res.Upstreams {
		rows[u.Name] = u
	}
	tests := []struct {
		name                 string
		ok, errors, timeouts int
		reason, skipped      string
	}{
		{name: "good", ok: n},
		{name: "wrongkey", errors: n, reason: "HTTP 401 invalid_api_key"},
		{name: "refused", errors: n, reason: "connection refused"},
		{name: "hangs", timeouts: n, reason: "timeout (limit 300ms)"},
		{name: "cuts", errors: n, reason: "connection closed mid-answer"},
		{name: "early", errors: n, reason: "stream ended before a finish_reason"},
		{name: "nokey", skipped: "NOKEY_API_KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, ok := rows[tt.name]
			if !ok {
				t.Fatalf("no row for %s", tt.name)
			}
			if u.OK != tt.ok || u.Errors != tt.errors || u.Timeouts != tt.timeouts {
				t.Errorf("ok %d errors %d timeouts %d, want %d %d %d (failures %+v)",
					u.OK, u.Errors, u.Timeouts, tt.ok, tt.errors, tt.timeouts, u.Failures)
			}
			if tt.reason != "" && (len(u.Failures) != 1 || u.Failures[0].Reason != tt.reason) {
				t.Errorf("failures %+v, want all %q", u.Failures, tt.reason)
			}
			if tt.skipped != "" && (!strings.Contains(u.Skipped, tt.skipped) || u.Sent != 0) {
				t.Errorf("skipped %q after %d requests, want a reason naming %s", u.Skipped, u.Sent, tt.skipped)
			}
			if tt.ok == 0 && (u.Latency.P50.Valid() || u.CostPerMTok.Valid()) {
				t.Errorf("a row without answers shows figures: %+v", u)
			}
		})
	}

	var out bytes.Buffer
	if err := res.Table().WriteText(&out); err != nil {
		t.Fatal(err)
	}
	if err := res.WriteJSON(&out); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), wrongKey) || strings.Contains(out.String(), "sk-the-right-key") {
		t.Errorf("an API key leaked into the output:\n%s", out.String())
	}
	for _, want := range []string{"wrongkey: ", "4× HTTP 401 invalid_api_key", "nokey: not run: api_key: environment variable NOKEY_API_KEY is not set"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestCompareInterleaves checks the schedule: both upstreams get the same
// prompts in the same modes, and a fast upstream never runs ahead of a slow
// one by more than the concurrency.
func TestCompareInterleaves(t *testing.T) {
	const n, conc = 30, 2
	rec := &recorder{}
	slow := httptest.NewServer(rec.wrap("slow", upstreamsim.New(upstreamsim.Config{Latency: 20 * time.Millisecond})))
	t.Cleanup(slow.Close)
	fast := httptest.NewServer(rec.wrap("fast", upstreamsim.New(upstreamsim.Config{})))
	t.Cleanup(fast.Close)
	cfg := parseTestConfig(t, fmt.Sprintf(`
upstreams:
  - {name: slow, base_url: %q}
  - {name: fast, base_url: %q}
models:
  - {name: m, route: [slow, fast]}
`, slow.URL+"/v1", fast.URL+"/v1"), nil)
	if _, err := Compare(context.Background(), cfg, CompareOptions{
		Model: "m", Prompts: testPrompts(t), Requests: n, Concurrency: conc, Stream: StreamMixed,
	}); err != nil {
		t.Fatal(err)
	}

	seen := rec.arrivals()
	counts := map[string]int{}
	perUpstream := map[string][]string{}
	for i, a := range seen {
		counts[a.upstream]++
		perUpstream[a.upstream] = append(perUpstream[a.upstream], fmt.Sprintf("%t %s", a.stream, a.content))
		// A request reaches its upstream after it is dispatched, and at
		// most conc dispatched requests per upstream are on their way.
		if d := counts["fast"] - counts["slow"]; d > conc+1 || -d > conc+1 {
			t.Fatalf("after %d arrivals fast has %d and slow %d: the schedule is not interleaved", i+1, counts["fast"], counts["slow"])
		}
	}
	if counts["fast"] != n || counts["slow"] != n {
		t.Fatalf("arrivals %v, want %d each", counts, n)
	}
	a, b := perUpstream["slow"], perUpstream["fast"]
	slices.Sort(a)
	slices.Sort(b)
	if !slices.Equal(a, b) {
		t.Errorf("the upstreams got different requests:\nslow %q\nfast %q", a, b)
	}
	streamed := 0
	for _, s := range a {
		if strings.HasPrefix(s, "true") {
			streamed++
		}
	}
	if streamed != n/2 {
		t.Errorf("%d of %d streamed in mixed mode", streamed, n)
	}
}

// TestCompareInterrupted: cancelling the run returns what completed,
// marked, and drops the requests it cut short instead of counting them as
// failures.
func TestCompareInterrupted(t *testing.T) {
	// The simulator holds every request until its client goes away; the
	// first one arriving is the signal that the run is under way.
	arrived := make(chan struct{})
	var once sync.Once
	sim := upstreamsim.New(upstreamsim.Config{HangRate: 1})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/chat/completions") {
			once.Do(func() { close(arrived) })
		}
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	cfg := parseTestConfig(t, fmt.Sprintf(`
upstreams: [{name: u, base_url: %q}]
models: [{name: m, route: [u]}]
`, srv.URL+"/v1"), nil)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-arrived
		cancel()
	}()
	res, err := Compare(ctx, cfg, CompareOptions{
		Model: "m", Prompts: testPrompts(t), Requests: 10, Concurrency: 2, Timeout: time.Minute,
	})
	if !errors.Is(err, context.Canceled) || res == nil || !res.Interrupted {
		t.Fatalf("err %v, result %+v: want an interrupted result", err, res)
	}
	if u := res.Upstreams[0]; u.Sent != 0 || u.Timeouts != 0 || u.Errors != 0 {
		t.Errorf("cut-short requests were counted: %+v", u)
	}
	var out bytes.Buffer
	if err := res.Table().WriteText(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "INTERRUPTED") {
		t.Errorf("the table does not say it was interrupted:\n%s", out.String())
	}
}

func TestCompareOptionErrors(t *testing.T) {
	sim := startSim(t, upstreamsim.Config{})
	cfg := parseTestConfig(t, fmt.Sprintf(`
upstreams: [{name: u, base_url: %q}, {name: v, base_url: %q}]
models: [{name: m, route: [u]}]
`, sim, sim), nil)
	base := CompareOptions{Model: "m", Prompts: testPrompts(t), Requests: 1, Concurrency: 1}
	tests := []struct {
		name string
		mod  func(*CompareOptions)
		want string
	}{
		{"unknown model", func(o *CompareOptions) { o.Model = "x" }, `model "x" is not in the config`},
		{"unknown upstream", func(o *CompareOptions) { o.Upstreams = []string{"u", "w"} }, `upstream "w" is not in the config`},
		{"upstream twice", func(o *CompareOptions) { o.Upstreams = []string{"u", "u"} }, `upstream "u" is listed twice`},
		{"no requests", func(o *CompareOptions) { o.Requests = 0 }, "requests per upstream must be at least 1"},
		{"no concurrency", func(o *CompareOptions) { o.Concurrency = 0 }, "concurrency must be at least 1"},
		{"bad stream mode", func(o *CompareOptions) { o.Stream = "sometimes" }, `stream mode "sometimes"`},
		{"no prompts", func(o *CompareOptions) { o.Prompts = nil }, "no prompts"},
		{"negative volume", func(o *CompareOptions) { o.MonthlyTokens = -1 }, "monthly tokens must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			tt.mod(&o)
			_, err := Compare(context.Background(), cfg, o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
