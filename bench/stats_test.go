package bench

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestPercentiles(t *testing.T) {
	ms := func(v ...int) sample {
		var s sample
		for _, n := range v {
			s = append(s, time.Duration(n)*time.Millisecond)
		}
		return s
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // unsorted on purpose
	}
	tests := []struct {
		name string
		s    sample
		want Percentiles
	}{
		{"one", ms(7), Percentiles{7000, 7000, 7000, 7000, 7000, 7000}},
		{"nearest rank of 1..100", ms(hundred...), Percentiles{50000, 90000, 95000, 99000, 100000, 100000}},
		{"two", ms(1, 3), Percentiles{1000, 3000, 3000, 3000, 3000, 3000}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.s.percentiles(); got != tc.want {
				t.Errorf("percentiles = %+v, want %+v", got, tc.want)
			}
		})
	}
	if p := (sample{}).percentiles(); !math.IsNaN(p.P50) || !math.IsNaN(p.P999) {
		t.Errorf("empty sample = %+v, want NaN (not a fast-looking zero)", p)
	}
}

func TestHistogramQuantile(t *testing.T) {
	inf := math.Inf(1)
	h := histogram{bounds: []float64{1, 2, 4, inf}, counts: []float64{10, 60, 100, 100}}
	tests := []struct {
		q, want float64
	}{
		{0.05, 0.5},    // half-way through the first bucket, from 0
		{0.10, 1},      // its top
		{0.35, 1.5},    // half-way through (1,2]
		{0.80, 3},      // half-way through (2,4]
		{0.999, 3.995}, // near the top of the last finite bucket
	}
	for _, tc := range tests {
		if got := h.quantile(tc.q); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	over := histogram{bounds: []float64{1, 2, inf}, counts: []float64{0, 0, 5}}
	if got := over.quantile(0.5); got != 2 {
		t.Errorf("quantile in +Inf = %v, want the highest finite bound 2", got)
	}
	if got := (histogram{}).quantile(0.5); !math.IsNaN(got) {
		t.Errorf("empty histogram quantile = %v, want NaN", got)
	}
}

func TestHistogramWindow(t *testing.T) {
	inf := math.Inf(1)
	before := histogram{bounds: []float64{1, inf}, counts: []float64{5, 8}}
	after := histogram{bounds: []float64{1, inf}, counts: []float64{9, 20}}
	w, err := after.minus(before)
	if err != nil {
		t.Fatal(err)
	}
	if w.counts[0] != 4 || w.counts[1] != 12 {
		t.Errorf("window = %v, want [4 12]", w.counts)
	}
	sum := w.plus(w)
	if sum.total() != 24 {
		t.Errorf("two windows total %v, want 24", sum.total())
	}
	if _, err := after.minus(histogram{bounds: []float64{inf}, counts: []float64{1}}); err == nil {
		t.Error("minus with different buckets: no error")
	}
}

func TestSlope(t *testing.T) {
	tests := []struct {
		name string
		pts  []RSSPoint
		want float64
	}{
		{"exact line", []RSSPoint{{0, 1000}, {10, 2000}, {20, 3000}}, 100},
		{"least squares", []RSSPoint{{0, 0}, {1, 1}, {2, 1}, {3, 2}}, 0.6},
		{"one point", []RSSPoint{{5, 5}}, 0},
		{"same x", []RSSPoint{{5, 5}, {5, 9}}, 0},
	}
	for _, tc := range tests {
		if got := slope(tc.pts); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s: slope = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestStreamCapacity(t *testing.T) {
	tests := []struct {
		nofile          uint64
		used, perStream int
		want            int
	}{
		{20000, 36, 1, 19900},
		{20000, 136, 2, 9900},
		{20000, 19990, 2, 1},
		{math.MaxUint64, 0, 1, math.MaxInt32 - idleMargin},
	}
	for _, tc := range tests {
		if got := streamCapacity(tc.nofile, tc.used, tc.perStream); got != tc.want {
			t.Errorf("streamCapacity(%d, %d, %d) = %d, want %d", tc.nofile, tc.used, tc.perStream, got, tc.want)
		}
	}
}

func TestParsePerfReport(t *testing.T) {
	self := `# Overhead  Symbol                          IPC   [IPC Coverage]
# ........  ......
#
    32.39%  [k] finish_task_switch.isra.0          -      -
     1.80%  [.] runtime.step                       -      -
     1.29%  [.] github.com/tidwall/gjson.parseObject
`
	got := parsePerfReport([]byte(self), false, 2, nil)
	want := []ProfileLine{{Percent: 32.39, Symbol: "[kernel] finish_task_switch.isra.0"}, {Percent: 1.8, Symbol: "runtime.step"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("self = %+v, want %+v", got, want)
	}
	cum := `    59.90%     0.77%  [k] do_syscall_64            -      -
    38.82%     0.51%  [.] net/http.(*conn).serve   -      -
`
	got = parsePerfReport([]byte(cum), true, 5, nil)
	if len(got) != 2 || got[1].Percent != 38.82 || got[1].Self != 0.51 || got[1].Symbol != "net/http.(*conn).serve" {
		t.Errorf("cumulative = %+v", got)
	}
	got = parsePerfReport([]byte(self), false, 5, gatewayCode)
	if len(got) != 1 || got[0].Symbol != "github.com/tidwall/gjson.parseObject" {
		t.Errorf("gateway lines = %+v, want only gjson's", got)
	}
}

func TestTargetJudge(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name        string
		tg          Target
		wantVerdict string
		wantText    string
	}{
		{"under a ceiling", Target{Value: 40, Limit: 50}, Met, Met},
		{"over a ceiling", Target{Value: 75, Limit: 50}, NotMet, "NOT MET (misses by 50%)"},
		{"above a floor", Target{Value: 12, Limit: 10, HigherIsBetter: true}, Met, Met},
		{"below a floor", Target{Value: 8, Limit: 10, HigherIsBetter: true}, NotMet, "NOT MET (misses by 20%)"},
		{"nothing measured", Target{Value: nan, Limit: 10}, NotMeasured, NotMeasured},
		{"reference at zero", Target{Value: 5, Limit: 0}, NotMet, NotMet},
	}
	for _, tc := range tests {
		tg := tc.tg
		tg.judge()
		if tg.Verdict != tc.wantVerdict || tg.verdictText() != tc.wantText {
			t.Errorf("%s: verdict %q (%q), want %q (%q)", tc.name, tg.Verdict, tg.verdictText(), tc.wantVerdict, tc.wantText)
		}
	}
	b, err := notMeasured("x", "gateway", "why").MarshalJSON()
	if err != nil || !strings.Contains(string(b), `"ratio":null`) {
		t.Errorf("NaN target JSON = %s, %v; want nulls", b, err)
	}
}
