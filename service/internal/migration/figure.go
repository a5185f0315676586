package migration

import (
	"math"
	"slices"
	"strconv"
	"time"
)

// Figure is one measured number of a table. It is NaN when there was nothing
// to measure (no successful answer, no usage reported, no reference price):
// a missing figure must read as missing, never as a zero that looks like a
// measurement. JSON writes it as null.
type Figure float64

// Missing is the Figure for "not measured".
var Missing = Figure(math.NaN())

// Valid reports whether the figure was measured.
func (f Figure) Valid() bool {
	v := float64(f)
	return !math.IsNaN(v) && !math.IsInf(v, 0)
}

// MarshalJSON writes the number, or null when it is missing.
func (f Figure) MarshalJSON() ([]byte, error) {
	if !f.Valid() {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, float64(f), 'g', -1, 64), nil
}

// UnmarshalJSON reads a number or null, so that saved results load back.
func (f *Figure) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*f = Missing
		return nil
	}
	v, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return err
	}
	*f = Figure(v)
	return nil
}

// ratio is num/den, missing when den is zero.
func ratio(num, den float64) Figure {
	if den == 0 {
		return Missing
	}
	return Figure(num / den)
}

// Percentiles are latency percentiles in seconds.
type Percentiles struct {
	P50 Figure `json:"p50_seconds"`
	P95 Figure `json:"p95_seconds"`
	P99 Figure `json:"p99_seconds"`
}

// percentilesOf summarises samples; it sorts them in place.
func percentilesOf(samples []time.Duration) Percentiles {
	slices.Sort(samples)
	return Percentiles{
		P50: quantile(samples, 0.50),
		P95: quantile(samples, 0.95),
		P99: quantile(samples, 0.99),
	}
}

// quantile of sorted samples, in seconds, interpolating linearly between the
// two nearest ranks (the estimator spreadsheets and numpy use by default), so
// a p99 of 50 samples is not simply the maximum.
func quantile(sorted []time.Duration, q float64) Figure {
	if len(sorted) == 0 {
		return Missing
	}
	pos := q * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(sorted)-1)
	frac := pos - float64(lo)
	v := float64(sorted[lo]) + frac*float64(sorted[hi]-sorted[lo])
	return Figure(v / float64(time.Second))
}

// median of values, missing when there are none; it sorts them in place.
func median(values []float64) Figure {
	if len(values) == 0 {
		return Missing
	}
	slices.Sort(values)
	n := len(values)
	if n%2 == 1 {
		return Figure(values[n/2])
	}
	return Figure((values[n/2-1] + values[n/2]) / 2)
}
