package migration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/app"
	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// TestReportByTeamAndKey: a known load of three named keys in two teams
// through a real gateway, scraped by a real Prometheus; the report by team
// and by key counts each one's requests, refusals, tokens and cost as the
// gateway did.
func TestReportByTeamAndKey(t *testing.T) {
	sim := startSim(t, upstreamsim.Config{CompletionTokens: 20})
	cfg := parseTestConfig(t, fmt.Sprintf(`
listen: "127.0.0.1:0"
upstreams: [{name: sim, base_url: %q}]
models:
  - {name: m, route: [sim], price: {input_per_mtok: 1, output_per_mtok: 2}, reference_price: {input_per_mtok: 4, output_per_mtok: 8}}
  - {name: other, route: [sim], price: {input_per_mtok: 1, output_per_mtok: 2}}
teams: [{name: search}, {name: batch, models: [m]}]
keys:
  - {name: a, team: search, key: sk-report-key-a-0123456789}
  - {name: b, team: search, key: sk-report-key-b-0123456789}
  - {name: c, team: batch, key: sk-report-key-c-0123456789}
gpu: {interval: 1h}
log: {level: error, requests: false}
`, sim), nil)
	a, err := app.New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	gw := httptest.NewServer(a.Handler())
	t.Cleanup(gw.Close)
	send := func(key, model string) int {
		req, _ := http.NewRequest(http.MethodPost, gw.URL+"/v1/chat/completions",
			bytes.NewReader([]byte(`{"model":"`+model+`","messages":[{"role":"user","content":"hello there"}]}`)))
		req.Header.Set("Authorization", "Bearer sk-report-key-"+key+"-0123456789")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}

	// Every key's series exist from the config on, before the first
	// scrape, so increase() counts exactly the load.
	const scrapeGap = 250 * time.Millisecond
	prom := testenv.StartPrometheus(t, testenv.PrometheusOptions{
		Targets: []string{strings.TrimPrefix(gw.URL, "http://")}, ScrapeInterval: scrapeGap})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := prom.WaitForSeries(ctx, `relaygate_key_requests_total{key="c"} == 0`); err != nil {
		t.Fatal(err)
	}
	load := map[string]int{"a": 6, "b": 4, "c": 5}
	for key, n := range load {
		for range n {
			if code := send(key, "m"); code != 200 {
				t.Fatalf("key %s: %d", key, code)
			}
		}
	}
	if code := send("c", "other"); code != 403 {
		t.Fatalf("key c asking for a model its team may not use: %d", code)
	}
	if code := send("a", "other"); code != 200 { // no reference price: no savings
		t.Fatalf("key a, model other: %d", code)
	}
	loadEnd := time.Now()
	vec, err := prom.WaitForSeries(ctx, fmt.Sprintf(`timestamp(relaygate_inflight_requests) > %f`,
		float64(loadEnd.Add(4*scrapeGap).UnixMilli())/1000))
	if err != nil {
		t.Fatal(err)
	}
	end := time.UnixMilli(int64(math.Round(float64(vec[0].Value) * 1000)))

	reg := a.Metrics.Registry
	val := func(name string, labels map[string]string) float64 { return testenv.MetricValue(t, reg, name, labels) }
	near := func(what string, got Figure, want float64) {
		t.Helper()
		if math.Abs(float64(got)-want) > 1e-6*math.Max(1, math.Abs(want)) {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	for _, by := range []string{ByTeam, ByKey} {
		res, err := Report(ctx, ReportOptions{API: prom.API, Source: prom.URL, Window: time.Hour, End: end, By: by})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{"search": true, "batch": true}
		if by == ByKey {
			want = map[string]bool{"search/a": true, "search/b": true, "batch/c": true}
		}
		if len(res.Groups) != len(want) {
			t.Fatalf("by %s: %+v", by, res.Groups)
		}
		for _, g := range res.Groups {
			name, labels := g.Team, map[string]string{"team": g.Team}
			if by == ByKey {
				name, labels = g.Team+"/"+g.Key, map[string]string{"team": g.Team, "key": g.Key}
			}
			if !want[name] {
				t.Errorf("by %s: unexpected group %q", by, name)
			}
			near(name+" requests", g.Requests, val("relaygate_key_requests_total", labels))
			near(name+" cost", g.CostUSD, val("relaygate_spend_usd_total", labels))
			near(name+" reference", g.ReferenceUSD, val("relaygate_key_reference_cost_usd_total", labels))
			near(name+" prompt tokens", g.PromptTokens, val("relaygate_key_tokens_total", mergeLabels(labels, "kind", "prompt")))
			near(name+" completion tokens", g.CompletionTokens, val("relaygate_key_tokens_total", mergeLabels(labels, "kind", "completion")))
			if g.CostUSD <= 0 || g.SavingsUSD <= 0 {
				t.Errorf("%s: cost %v, savings %v; both are positive", name, g.CostUSD, g.SavingsUSD)
			}
		}
		var md strings.Builder
		if err := res.WriteMarkdown(&md); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(md.String(), "Requests, cost and savings by "+by) {
			t.Errorf("the markdown report has no table by %s:\n%s", by, md.String())
		}
	}
	res, err := Report(ctx, ReportOptions{API: prom.API, Source: prom.URL, Window: time.Hour, End: end, By: ByTeam})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range res.Groups {
		wantReq, wantRefused := float64(load["a"]+load["b"]+1), 0.0
		if g.Team == "batch" {
			wantReq, wantRefused = float64(load["c"]+1), 1
		}
		near(g.Team+" requests (the load)", g.Requests, wantReq)
		near(g.Team+" refusals", g.Refusals, wantRefused)
	}
}

func mergeLabels(l map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for a, b := range l {
		out[a] = b
	}
	return out
}
