package bench

import (
	"math"
	"slices"
	"time"
)

// Percentiles are latencies in microseconds, the unit the targets are
// written in. Added percentiles (a subject's minus the direct simulator's)
// may be negative when the difference is inside the noise.
type Percentiles struct {
	P50 float64 `json:"p50_us"`
	P90 float64 `json:"p90_us"`
	// P95 is for the stream APIs' comparison with chat (issue 12), which
	// is judged at p50 and p95; the tables keep p50/p90/p99/p99.9.
	P95  float64 `json:"p95_us"`
	P99  float64 `json:"p99_us"`
	P999 float64 `json:"p999_us"`
	Max  float64 `json:"max_us"`
}

// sample collects durations from every round of one subject in one
// scenario.
type sample []time.Duration

// percentiles sorts s and reads the nearest-rank percentiles. An empty
// sample gives NaN, which the report prints as "n/a" rather than a zero
// that could pass for a fast answer.
func (s sample) percentiles() Percentiles {
	if len(s) == 0 {
		nan := math.NaN()
		return Percentiles{nan, nan, nan, nan, nan, nan}
	}
	slices.Sort(s)
	return Percentiles{
		P50:  micros(s.rank(0.50)),
		P90:  micros(s.rank(0.90)),
		P95:  micros(s.rank(0.95)),
		P99:  micros(s.rank(0.99)),
		P999: micros(s.rank(0.999)),
		Max:  micros(s[len(s)-1]),
	}
}

// rank returns the nearest-rank q-quantile of a sorted sample.
func (s sample) rank(q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// minus returns p − base, percentile by percentile.
func (p Percentiles) minus(base Percentiles) Percentiles {
	return Percentiles{
		P50:  p.P50 - base.P50,
		P90:  p.P90 - base.P90,
		P95:  p.P95 - base.P95,
		P99:  p.P99 - base.P99,
		P999: p.P999 - base.P999,
		Max:  p.Max - base.Max,
	}
}

// values lists the four reported percentiles in order, for tables and
// charts.
func (p Percentiles) values() [4]float64 { return [4]float64{p.P50, p.P90, p.P99, p.P999} }

var percentileNames = [4]string{"p50", "p90", "p99", "p99.9"}
