package migration

import (
	"fmt"
	"io"
	"strings"
)

// Table is the comparison as one row per upstream, with what the figures
// mean and why requests failed in the notes.
func (r *CompareResult) Table() *Table {
	t := &Table{
		Title: fmt.Sprintf("relaygate compare, %s: model %s, %d requests per upstream, concurrency %d, streaming %s, prompts %s (%d)",
			r.Started.Format("2006-01-02 15:04 MST"), r.Model, r.Requests, r.Concurrency, r.Stream, r.PromptSource, r.Prompts),
		Columns: []string{"UPSTREAM", "SENT", "OK", "ERRORS", "TIMEOUTS", "P50", "P95", "P99",
			"TTFT P50", "TTFT P95", "TTFT P99", "TOK/S", "$/MTOK", "MONTHLY", "SAVINGS"},
	}
	for _, u := range r.Upstreams {
		if u.Skipped != "" {
			row := []string{u.Name}
			for range len(t.Columns) - 1 {
				row = append(row, "-")
			}
			t.Rows = append(t.Rows, row)
			continue
		}
		tps := na
		if u.TokensPerSecond.Valid() {
			tps = fmt.Sprintf("%.0f", float64(u.TokensPerSecond))
		}
		t.Rows = append(t.Rows, []string{
			u.Name, fmt.Sprint(u.Sent), fmtPercent(u.Availability), fmtPercent(u.ErrorRate), fmtPercent(u.TimeoutRate),
			fmtSeconds(u.Latency.P50), fmtSeconds(u.Latency.P95), fmtSeconds(u.Latency.P99),
			fmtSeconds(u.TTFT.P50), fmtSeconds(u.TTFT.P95), fmtSeconds(u.TTFT.P99),
			tps, fmtUSD(u.CostPerMTok), fmtUSD(u.MonthlyCostUSD), fmtSavings(u.MonthlySavingsUSD, u.SavingsShare),
		})
	}

	if r.Interrupted {
		t.Notes = append(t.Notes, "INTERRUPTED: figures cover only the requests that completed.")
	}
	t.Notes = append(t.Notes, "Latency is to the whole answer over successful requests; TTFT to the first token of successful streams; "+
		"TOK/S is the median of completion tokens per second of request time.")
	cost := "$/MTOK is each upstream's price (its route entry's, else the model's) over the tokens its usage reported, at this prompt set's input/output mix."
	if r.MonthlyTokens > 0 {
		cost += fmt.Sprintf(" MONTHLY is that at %s tokens a month", fmtTokens(r.MonthlyTokens))
		if r.ReferencePrice != nil {
			cost += fmt.Sprintf("; SAVINGS is against the model's reference price ($%.2f in / $%.2f out per Mtok) for the same tokens",
				r.ReferencePrice.InputPerMTok, r.ReferencePrice.OutputPerMTok)
		} else {
			cost += "; the model has no reference_price, so there are no savings to measure"
		}
		cost += "."
	}
	t.Notes = append(t.Notes, cost)
	for _, u := range r.Upstreams {
		if n := u.upstreamNote(); n != "" {
			t.Notes = append(t.Notes, u.Name+": "+n)
		}
	}
	return t
}

// upstreamNote says what the row's figures rest on and why requests failed.
func (u *UpstreamResult) upstreamNote() string {
	if u.Skipped != "" {
		return u.Skipped
	}
	var parts []string
	parts = append(parts, fmt.Sprintf("model %s, %s prompt + %s completion tokens reported, run cost %s",
		u.Model, fmtTokens(float64(u.PromptTokens)), fmtTokens(float64(u.CompletionTokens)), fmtUSD(u.CostUSD)))
	if u.NoUsage > 0 {
		parts = append(parts, fmt.Sprintf("%d answers reported no usage and are not in the cost", u.NoUsage))
	}
	if len(u.Failures) > 0 {
		var fs []string
		for _, f := range u.Failures {
			fs = append(fs, fmt.Sprintf("%d× %s", f.Count, f.Reason))
		}
		parts = append(parts, "failures: "+strings.Join(fs, ", "))
	}
	return strings.Join(parts, "; ")
}

// WriteJSON writes the result as indented JSON.
func (r *CompareResult) WriteJSON(w io.Writer) error {
	return writeJSON(w, r, "comparison")
}

// WriteChart draws the latency and TTFT distributions of each upstream's
// successful requests into a PNG at path.
func (r *CompareResult) WriteChart(path string) error {
	lat := chartPanel{title: "Latency to the whole answer (successful requests)"}
	ttft := chartPanel{title: "Time to first token (successful streams)"}
	for _, u := range r.Upstreams {
		lat.series = append(lat.series, sampleSeries(u.Name, u.latencies))
		ttft.series = append(ttft.series, sampleSeries(u.Name, u.ttfts))
	}
	title := fmt.Sprintf("relaygate compare: %s, %d requests per upstream", r.Model, r.Requests)
	return writeChart(path, title, []chartPanel{lat, ttft})
}
