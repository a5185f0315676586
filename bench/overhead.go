package bench

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"sort"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// overheadMetric is the gateway's own time per request (SPEC.md).
const overheadMetric = "relaygate_overhead_seconds"

// histogram is a cumulative Prometheus histogram: counts[i] observations
// at or under bounds[i]; the last bound is +Inf.
type histogram struct {
	bounds []float64
	counts []float64
}

// scrapeHistogram reads one unlabelled histogram from a /metrics page.
func scrapeHistogram(ctx context.Context, client *http.Client, url, name string) (histogram, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return histogram{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return histogram{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return histogram{}, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return histogram{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	fam, ok := fams[name]
	if !ok || len(fam.GetMetric()) != 1 || fam.GetMetric()[0].GetHistogram() == nil {
		return histogram{}, fmt.Errorf("scrape %s: no single histogram %s", url, name)
	}
	h := fam.GetMetric()[0].GetHistogram()
	var out histogram
	for _, b := range h.GetBucket() {
		out.bounds = append(out.bounds, b.GetUpperBound())
		out.counts = append(out.counts, float64(b.GetCumulativeCount()))
	}
	if n := len(out.bounds); n == 0 || !math.IsInf(out.bounds[n-1], 1) {
		out.bounds = append(out.bounds, math.Inf(1))
		out.counts = append(out.counts, float64(h.GetSampleCount()))
	}
	return out, nil
}

// minus is the histogram of the observations made between base and h.
func (h histogram) minus(base histogram) (histogram, error) {
	if len(base.bounds) == 0 {
		return h, nil
	}
	if len(h.bounds) != len(base.bounds) {
		return histogram{}, fmt.Errorf("histogram buckets changed between scrapes (%d, then %d)", len(base.bounds), len(h.bounds))
	}
	out := histogram{bounds: h.bounds, counts: make([]float64, len(h.counts))}
	for i := range h.counts {
		out.counts[i] = h.counts[i] - base.counts[i]
	}
	return out, nil
}

// plus adds the observations of two windows with the same buckets.
func (h histogram) plus(o histogram) histogram {
	if len(h.bounds) == 0 {
		return o
	}
	out := histogram{bounds: h.bounds, counts: make([]float64, len(h.counts))}
	for i := range h.counts {
		out.counts[i] = h.counts[i] + o.counts[i]
	}
	return out
}

func (h histogram) total() float64 {
	if len(h.counts) == 0 {
		return 0
	}
	return h.counts[len(h.counts)-1]
}

// quantile estimates the q-quantile as Prometheus's histogram_quantile
// does: linearly within the bucket that holds it. The answer is only as
// fine as the buckets (…, 20 µs, 40 µs, 80 µs, … for the overhead), which
// the report says next to it.
func (h histogram) quantile(q float64) float64 {
	total := h.total()
	if total == 0 || len(h.bounds) < 2 {
		return math.NaN()
	}
	rank := q * total
	i := sort.Search(len(h.counts), func(i int) bool { return h.counts[i] >= rank })
	if i == len(h.bounds)-1 {
		// In the +Inf bucket: the highest finite bound is all that is known.
		return h.bounds[len(h.bounds)-2]
	}
	lower, below := 0.0, 0.0
	if i > 0 {
		lower, below = h.bounds[i-1], h.counts[i-1]
	}
	inBucket := h.counts[i] - below
	if inBucket == 0 {
		return h.bounds[i]
	}
	return lower + (h.bounds[i]-lower)*(rank-below)/inBucket
}

// percentiles returns the histogram's quantiles in microseconds.
func (h histogram) percentiles() Percentiles {
	us := func(q float64) float64 { return h.quantile(q) * 1e6 }
	return Percentiles{P50: us(0.5), P90: us(0.9), P95: us(0.95), P99: us(0.99), P999: us(0.999), Max: math.NaN()}
}
