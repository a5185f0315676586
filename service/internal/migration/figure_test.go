package migration

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	tests := []struct {
		name    string
		samples []time.Duration
		q       float64
		want    float64 // seconds; NaN for missing
	}{
		{"none", nil, 0.5, math.NaN()},
		{"one", ms(7), 0.99, 0.007},
		{"median of odd", ms(1, 2, 3), 0.5, 0.002},
		{"median of even interpolates", ms(1, 2, 3, 4), 0.5, 0.0025},
		{"p95 interpolates between ranks", ms(100, 90, 80, 70, 60, 50, 40, 30, 20, 10), 0.95, 0.0955},
		{"p100 is the maximum", ms(5, 1, 9), 1, 0.009},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := percentilesOf(tt.samples) // sorts
			got := quantile(tt.samples, tt.q)
			if math.IsNaN(tt.want) {
				if got.Valid() || p.P50.Valid() {
					t.Errorf("got %v, want missing", got)
				}
				return
			}
			if math.Abs(float64(got)-tt.want) > 1e-12 {
				t.Errorf("quantile %v = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
	if m := median([]float64{3, 1, 2, 10}); m != 2.5 {
		t.Errorf("median = %v", m)
	}
}

func TestFigureJSON(t *testing.T) {
	in := struct {
		A, B Figure
	}{Figure(1.5), Missing}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"A":1.5,"B":null}` {
		t.Errorf("JSON %s", b)
	}
	var out struct{ A, B Figure }
	if err := json.Unmarshal(b, &out); err != nil || out.A != 1.5 || out.B.Valid() {
		t.Errorf("read back %+v, %v", out, err)
	}
	if ratio(1, 0).Valid() || ratio(1, 4) != 0.25 {
		t.Error("ratio")
	}
}

func TestFormats(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{fmtSeconds(0.0042), "4.2ms"},
		{fmtSeconds(0.042), "42ms"},
		{fmtSeconds(1.234), "1.23s"},
		{fmtSeconds(250), "250s"},
		{fmtSeconds(Missing), "n/a"},
		{fmtPercent(0.0123), "1.2%"},
		{fmtUSD(0), "$0"},
		{fmtUSD(0.000123), "$0.000123"},
		{fmtUSD(12.345), "$12.35"},
		{fmtUSD(1234567.8), "$1,234,568"},
		{fmtUSD(-42), "-$42.00"},
		{fmtCount(5.2), "5"},
		{fmtCount(12345.6), "12,346"},
		{fmtTokens(950), "950"},
		{fmtTokens(12345), "12.3k"},
		{fmtTokens(100e6), "100M"},
		{fmtTokens(1.5e9), "1.5B"},
		{fmtSavings(10, 0.3), "$10.00 (30.0%)"},
		{fmtSavings(Missing, 0.3), "n/a"},
		{thousands(-1234), "-1,234"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestTableRendering(t *testing.T) {
	tb := &Table{Title: "T", Columns: []string{"A", "B"}, Rows: [][]string{{"x|y", ""}, {"long value", "2"}}, Notes: []string{"n"}}
	var md, text bytes.Buffer
	if err := tb.WriteMarkdown(&md, 3); err != nil {
		t.Fatal(err)
	}
	if want := "### T\n\n| A | B |\n| --- | --- |\n| x\\|y |   |\n| long value | 2 |\n\n- n\n\n"; md.String() != want {
		t.Errorf("markdown %q, want %q", md.String(), want)
	}
	if err := tb.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(text.String(), "\n"); len(lines) < 5 || strings.Index(lines[2], "B") != strings.Index(lines[4], "2") {
		t.Errorf("columns not aligned:\n%s", text.String())
	}
}

func TestMillisecondTicks(t *testing.T) {
	var labels []string
	for _, tk := range (msTicks{}).Ticks(3, 180) {
		if tk.Label != "" {
			labels = append(labels, tk.Label)
		}
	}
	if got := strings.Join(labels, " "); got != "5 10 20 50 100" {
		t.Errorf("labels %q", got)
	}
	labels = nil
	for _, tk := range (msTicks{}).Ticks(300, 990) {
		labels = append(labels, tk.Label)
	}
	if got := strings.Join(labels, " "); got != "300 400 500 600 700 800 900" {
		t.Errorf("labels within a decade %q", got)
	}
	if got := (msTicks{}).Ticks(0, 10); got != nil {
		t.Errorf("a log axis from 0 got ticks %v", got)
	}
}
