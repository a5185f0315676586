package metrics

import (
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// TestSpecNames is the contract test for SPEC.md's metric names: after one
// of each kind of event, every metric the SPEC names is exported with the
// SPEC's type and label names, nothing more (dashboards, alerts and the
// report query them by these names).
func TestSpecNames(t *testing.T) {
	m := New()
	m.Prepare("gpt-4.1", "chat", []string{"relay", "official"})
	m.Request("gpt-4.1", "chat", "relay", 200, 0.4)
	m.UpstreamDuration("relay", 0.39)
	m.Overhead(0.00003)
	m.TTFT("gpt-4.1", "chat", 0.2)
	m.Usage("gpt-4.1", "chat", "relay", 100, 50, 0.0006, 0.0012, true)
	m.Cache("hit")
	m.Retry("relay")
	m.Fallback("relay", "official")
	m.UpstreamUp("relay", true)
	m.Inflight(1)
	m.Connections("api").Inc()
	m.ConnectionRefused("api", "max_connections")

	want := []struct {
		name   string
		typ    dto.MetricType
		labels []string
	}{
		{"relaygate_requests_total", dto.MetricType_COUNTER, []string{"api", "code", "model", "upstream"}},
		{"relaygate_request_duration_seconds", dto.MetricType_HISTOGRAM, []string{"api", "model"}},
		{"relaygate_upstream_duration_seconds", dto.MetricType_HISTOGRAM, []string{"upstream"}},
		{"relaygate_overhead_seconds", dto.MetricType_HISTOGRAM, nil},
		{"relaygate_ttft_seconds", dto.MetricType_HISTOGRAM, []string{"api", "model"}},
		{"relaygate_tokens_total", dto.MetricType_COUNTER, []string{"api", "kind", "model"}},
		{"relaygate_cost_usd_total", dto.MetricType_COUNTER, []string{"api", "model", "upstream"}},
		{"relaygate_savings_usd_total", dto.MetricType_COUNTER, []string{"model"}},
		{"relaygate_cache_savings_usd_total", dto.MetricType_COUNTER, []string{"model"}},
		{"relaygate_cache_requests_total", dto.MetricType_COUNTER, []string{"result"}},
		{"relaygate_retries_total", dto.MetricType_COUNTER, []string{"upstream"}},
		{"relaygate_fallbacks_total", dto.MetricType_COUNTER, []string{"from", "to"}},
		{"relaygate_upstream_up", dto.MetricType_GAUGE, []string{"upstream"}},
		{"relaygate_inflight_requests", dto.MetricType_GAUGE, nil},
		{"relaygate_connections", dto.MetricType_GAUGE, []string{"listener"}},
		{"relaygate_connections_refused_total", dto.MetricType_COUNTER, []string{"listener", "reason"}},
	}
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf
	}
	for _, w := range want {
		mf := got[w.name]
		if mf == nil {
			t.Errorf("%s is not exported", w.name)
			continue
		}
		if mf.GetType() != w.typ {
			t.Errorf("%s is a %s, want a %s", w.name, mf.GetType(), w.typ)
		}
		for _, metric := range mf.GetMetric() {
			var names []string
			for _, lp := range metric.GetLabel() {
				names = append(names, lp.GetName())
			}
			slices.Sort(names)
			if !slices.Equal(names, w.labels) {
				t.Errorf("%s has labels %v, want %v", w.name, names, w.labels)
			}
		}
	}

	// The histograms must resolve a 40 µs overhead and a 60 s completion:
	// buckets at or below each, and one above 60 s.
	for _, name := range []string{"relaygate_request_duration_seconds", "relaygate_overhead_seconds"} {
		h := got[name].GetMetric()[0].GetHistogram()
		var bounds []float64
		for _, b := range h.GetBucket() {
			bounds = append(bounds, b.GetUpperBound())
		}
		if !slices.Contains(bounds, 0.00004) || !slices.Contains(bounds, 60) || slices.Max(bounds) <= 60 {
			t.Errorf("%s buckets %v do not resolve both 40µs and 60s", name, bounds)
		}
	}
}

// TestSavings checks the dollars behind relaygate_savings_usd_total:
// reference minus cost per answer, a cache hit saves the whole price, and a
// route dearer than the reference saves nothing (a counter cannot go down;
// a report takes routing's net savings from tokens and prices instead, and
// the cache's from relaygate_cache_savings_usd_total).
func TestSavings(t *testing.T) {
	tests := []struct {
		name                    string
		record                  func(m *Metrics)
		cost, saved, cacheSaved float64
	}{
		{"cheaper route", func(m *Metrics) { m.Usage("m", "chat", "u", 1000, 500, 0.003, 0.01, true) }, 0.003, 0.007, 0},
		{"no reference price", func(m *Metrics) { m.Usage("m", "chat", "u", 1000, 500, 0.003, 0, false) }, 0.003, 0, 0},
		{"dearer route", func(m *Metrics) { m.Usage("m", "chat", "u", 1000, 500, 0.02, 0.01, true) }, 0.02, 0, 0},
		{"cache hit", func(m *Metrics) { m.CacheSaving("m", 0.01) }, 0, 0.01, 0.01},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New()
			tt.record(m)
			if got := counterSum(t, m, "relaygate_savings_usd_total"); !near(got, tt.saved) {
				t.Errorf("savings %v, want %v", got, tt.saved)
			}
			if got := counterSum(t, m, "relaygate_cache_savings_usd_total"); !near(got, tt.cacheSaved) {
				t.Errorf("cache savings %v, want %v", got, tt.cacheSaved)
			}
			if got := counterSum(t, m, "relaygate_cost_usd_total"); !near(got, tt.cost) {
				t.Errorf("cost %v, want %v", got, tt.cost)
			}
		})
	}
}

func counterSum(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, metric := range mf.GetMetric() {
				sum += metric.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func near(a, b float64) bool { return a-b < 1e-12 && b-a < 1e-12 }

// TestPrepareCreatesFailureSeries: increase() and rate() cannot count what
// happened before a series' first scrape, so the first 502 of an outage, or
// the first fallback, must land in a series that already exists at zero.
func TestPrepareCreatesFailureSeries(t *testing.T) {
	m := New()
	m.Prepare("m", "chat", []string{"relay", "official", CacheUpstream})
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		for _, metric := range mf.GetMetric() {
			var labels []string
			for _, lp := range metric.GetLabel() {
				labels = append(labels, lp.GetName()+"="+lp.GetValue())
			}
			have[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = true
		}
	}
	for _, want := range []string{
		"relaygate_requests_total{api=chat,code=502,model=m,upstream=none}",
		"relaygate_requests_total{api=chat,code=504,model=m,upstream=none}",
		"relaygate_requests_total{api=chat,code=429,model=m,upstream=none}",
		"relaygate_requests_total{api=chat,code=503,model=m,upstream=none}",
		"relaygate_requests_total{api=chat,code=499,model=m,upstream=relay}",
		"relaygate_requests_total{api=chat,code=200,model=m,upstream=cache}",
		"relaygate_request_duration_seconds{api=chat,model=m}",
		"relaygate_ttft_seconds{api=chat,model=m}",
		"relaygate_cost_usd_total{api=chat,model=m,upstream=relay}",
		"relaygate_upstream_requests_total{result=error,upstream=relay}",
		"relaygate_upstream_requests_total{result=timeout,upstream=official}",
		"relaygate_fallbacks_total{from=relay,to=official}",
	} {
		if !have[want] {
			t.Errorf("no series %s before any request", want)
		}
	}
	for s := range have {
		if strings.Contains(s, "upstream_requests_total") && strings.Contains(s, "upstream=cache") || strings.Contains(s, "fallbacks_total") && strings.Contains(s, "cache") {
			t.Errorf("series %s: the cache is no upstream to attempt or fall back to", s)
		}
	}
}
