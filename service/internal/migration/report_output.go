package migration

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"gonum.org/v1/plot/plotter"
)

// ReportResult is what Report read; it is also the JSON output. Counts are
// increases over the window, dollars are sums over it, monthly figures are
// run-rates: the window's sum scaled to 30 days of the time it covered.
type ReportResult struct {
	Source string `json:"prometheus"`
	Match  string `json:"match,omitempty"`
	Window string `json:"window"`
	// Start and End bound what was covered: Start is later than End minus
	// the window when Prometheus has no older data from the gateway.
	Start          time.Time     `json:"start"`
	End            time.Time     `json:"end"`
	Covered        time.Duration `json:"-"`
	CoveredSeconds float64       `json:"covered_seconds"`
	window         time.Duration

	// By is ByTeam or ByKey when Groups holds the figures per team or
	// named key; empty otherwise.
	By        string           `json:"by,omitempty"`
	Groups    []GroupReport    `json:"groups,omitempty"`
	Upstreams []UpstreamReport `json:"upstreams"`
	Models    []ModelReport    `json:"models"`
	Total     ModelReport      `json:"total"`
	Cache     CacheReport      `json:"cache"`
	Fallbacks []FallbackReport `json:"fallbacks"`
	Notes     []string         `json:"notes,omitempty"`
}

// UpstreamReport is one upstream's attempts and answers.
type UpstreamReport struct {
	Name string `json:"name"`
	// Attempts counts every request sent to the upstream, retries and
	// fallbacks included, by result (an upstream's 4xx answer is a success:
	// it answered).
	Attempts     Figure `json:"attempts"`
	Success      Figure `json:"success"`
	Errors       Figure `json:"errors"`
	Timeouts     Figure `json:"timeouts"`
	Retries      Figure `json:"retries"`
	Availability Figure `json:"availability"`
	ErrorRate    Figure `json:"error_rate"`
	TimeoutRate  Figure `json:"timeout_rate"`
	// Latency is of one attempt, body included.
	Latency Percentiles `json:"latency"`
	// Answers counts client requests this upstream answered.
	Answers        Figure `json:"answers"`
	CostUSD        Figure `json:"cost_usd"`
	MonthlyCostUSD Figure `json:"monthly_cost_usd"`
	// FellBack counts requests passed from this upstream to the next.
	FellBack Figure `json:"fell_back"`

	quantiles map[float64]float64
}

// ModelReport is what clients asking for one model got, and what it cost.
type ModelReport struct {
	Name         string `json:"name"`
	Requests     Figure `json:"requests"`
	ServerErrors Figure `json:"server_errors"`
	ClientClosed Figure `json:"client_closed"`
	// Availability is the share of requests answered without a 5xx;
	// requests whose client went away count neither way.
	Availability Figure `json:"availability"`
	CacheHits    Figure `json:"cache_hits"`
	// Latency is the whole request as the client saw it; TTFT of streams.
	Latency Percentiles `json:"latency"`
	TTFT    Percentiles `json:"ttft"`
	// Tokens of answers served by upstreams (cache hits are not in them);
	// NoUsage counts answers that reported none.
	PromptTokens     Figure `json:"prompt_tokens"`
	CompletionTokens Figure `json:"completion_tokens"`
	NoUsage          Figure `json:"answers_without_usage"`
	// CostUSD is what upstreams charged; CostPerMTok that over their
	// tokens; ReferencePerMTok the same tokens at the reference price.
	CostUSD          Figure `json:"cost_usd"`
	CostPerMTok      Figure `json:"cost_per_mtok_usd"`
	ReferencePerMTok Figure `json:"reference_per_mtok_usd"`
	// SavingsUSD is the gateway's count against the reference price, cache
	// hits included; RoutingSavingsUSD and CacheSavingsUSD split it.
	// ReferenceUSD is what the same traffic would have cost at it.
	SavingsUSD        Figure `json:"savings_usd"`
	RoutingSavingsUSD Figure `json:"routing_savings_usd"`
	CacheSavingsUSD   Figure `json:"cache_savings_usd"`
	ReferenceUSD      Figure `json:"reference_usd"`
	SavingsShare      Figure `json:"savings_share"`
	MonthlyCostUSD    Figure `json:"monthly_cost_usd"`
	MonthlySavingsUSD Figure `json:"monthly_savings_usd"`

	latency, ttft map[float64]float64
}

// CacheReport is the response cache's look-ups and what its hits saved.
type CacheReport struct {
	Hits     Figure `json:"hits"`
	Misses   Figure `json:"misses"`
	Errors   Figure `json:"errors"`
	Bypassed Figure `json:"bypassed"`
	// HitRatio is hits over cacheable look-ups (hits, misses, errors).
	HitRatio        Figure `json:"hit_ratio"`
	SavedUSD        Figure `json:"saved_usd"`
	MonthlySavedUSD Figure `json:"monthly_saved_usd"`
}

// FallbackReport counts requests passed from one upstream to the next.
type FallbackReport struct {
	From  string `json:"from"`
	To    string `json:"to"`
	Count Figure `json:"count"`
	// Share is of all requests in the window.
	Share Figure `json:"share"`
}

// Title heads the report.
func (r *ReportResult) Title() string {
	return fmt.Sprintf("Relaygate report: last %s", r.Window)
}

// Summary is the line under the title: what the figures cover.
func (r *ReportResult) Summary() string {
	s := fmt.Sprintf("From %s to %s, read from Prometheus %s", r.Start.Format("2006-01-02 15:04:05 MST"),
		r.End.Format("2006-01-02 15:04:05 MST"), r.Source)
	if r.Match != "" {
		s += fmt.Sprintf(" (series matching {%s})", r.Match)
	}
	if r.Covered < r.window {
		s += fmt.Sprintf(". Prometheus has data from the gateway for the last %s of the %s window only", r.Covered.Round(time.Second), r.Window)
	}
	return s + "."
}

// Tables are the report's tables in reading order: per model with the
// total, per upstream, the cache, the fallbacks.
func (r *ReportResult) Tables() []*Table {
	models := &Table{
		Title: "Requests, latency, cost and savings by model",
		Columns: []string{"MODEL", "REQUESTS", "AVAILABILITY", "P50", "P95", "P99", "TTFT P50", "TTFT P95", "TTFT P99",
			"TOKENS IN/OUT", "$/MTOK", "REF $/MTOK", "COST", "SAVINGS", "MONTHLY COST", "MONTHLY SAVINGS"},
	}
	for _, m := range append(append([]ModelReport(nil), r.Models...), r.Total) {
		models.Rows = append(models.Rows, []string{
			m.Name, fmtCount(m.Requests), fmtPercent(m.Availability),
			fmtSeconds(m.Latency.P50), fmtSeconds(m.Latency.P95), fmtSeconds(m.Latency.P99),
			fmtSeconds(m.TTFT.P50), fmtSeconds(m.TTFT.P95), fmtSeconds(m.TTFT.P99),
			fmtTokens(float64(m.PromptTokens)) + " / " + fmtTokens(float64(m.CompletionTokens)),
			fmtUSD(m.CostPerMTok), fmtUSD(m.ReferencePerMTok), fmtUSD(m.CostUSD),
			fmtSavings(m.SavingsUSD, m.SavingsShare), fmtUSD(m.MonthlyCostUSD), fmtUSD(m.MonthlySavingsUSD),
		})
	}
	models.Notes = append(models.Notes,
		"AVAILABILITY is the share of requests answered without a 5xx (clients that went away are left out).",
		"Latency is the whole request as clients saw it; TTFT is to the first event of a stream.",
		"Tokens and $/MTOK are of answers upstreams served; cache hits cost nothing and are in SAVINGS, measured against each model's reference price.",
		fmt.Sprintf("MONTHLY figures are run-rates: the window's sums scaled to 30 days of the %s covered.", r.Covered.Round(time.Second)))
	for _, m := range r.Models {
		if m.NoUsage > 0.5 {
			models.Notes = append(models.Notes, fmt.Sprintf("%s: %s answers reported no usage; their tokens and cost are not counted.",
				m.Name, fmtCount(m.NoUsage)))
		}
	}

	ups := &Table{
		Title: "Upstreams",
		Columns: []string{"UPSTREAM", "ATTEMPTS", "AVAILABILITY", "ERRORS", "TIMEOUTS", "RETRIES",
			"P50", "P95", "P99", "ANSWERED", "FELL BACK", "COST", "MONTHLY COST"},
	}
	for _, u := range r.Upstreams {
		ups.Rows = append(ups.Rows, []string{
			u.Name, fmtCount(u.Attempts), fmtPercent(u.Availability), fmtPercent(u.ErrorRate), fmtPercent(u.TimeoutRate),
			fmtCount(u.Retries), fmtSeconds(u.Latency.P50), fmtSeconds(u.Latency.P95), fmtSeconds(u.Latency.P99),
			fmtCount(u.Answers), fmtCount(u.FellBack), fmtUSD(u.CostUSD), fmtUSD(u.MonthlyCostUSD),
		})
	}
	ups.Notes = append(ups.Notes,
		"ATTEMPTS counts every request sent to an upstream, retries and fallbacks included; AVAILABILITY is the share it answered (a 4xx is an answer).",
		"Latency is one attempt's wait on the upstream; ANSWERED counts the client requests it served; FELL BACK those passed on to the next upstream of a route.")

	c := r.Cache
	cache := &Table{
		Title:   "Cache",
		Columns: []string{"HIT RATIO", "HITS", "MISSES", "ERRORS", "BYPASSED", "SAVED", "MONTHLY SAVED"},
		Rows: [][]string{{fmtPercent(c.HitRatio), fmtCount(c.Hits), fmtCount(c.Misses), fmtCount(c.Errors),
			fmtCount(c.Bypassed), fmtUSD(c.SavedUSD), fmtUSD(c.MonthlySavedUSD)}},
		Notes: []string{"HIT RATIO is hits over cacheable look-ups; BYPASSED requests were not cacheable (not deterministic). " +
			"SAVED is the reference price of the answers the cache served."},
	}
	if !c.SavedUSD.Valid() {
		cache.Notes = append(cache.Notes, "SAVED needs the gateway config's reference prices (-config) to be split from routing savings.")
	}

	fb := &Table{Title: "Fallbacks", Columns: []string{"FROM", "TO", "REQUESTS", "SHARE OF ALL REQUESTS"}}
	for _, f := range r.Fallbacks {
		fb.Rows = append(fb.Rows, []string{f.From, f.To, fmtCount(f.Count), fmtPercent(f.Share)})
	}
	if len(r.Fallbacks) == 0 {
		fb.Notes = append(fb.Notes, "No request fell back in the window.")
	}
	tables := []*Table{models, ups, cache, fb}
	if r.By != "" {
		tables = append([]*Table{r.groupTable()}, tables...)
	}
	if len(r.Notes) > 0 {
		tables = append(tables, &Table{Title: "Notes", Notes: r.Notes})
	}
	return tables
}

// WriteMarkdown writes the report for a pull request or wiki page.
func (r *ReportResult) WriteMarkdown(w io.Writer) error {
	return r.write(w, fmt.Sprintf("# %s\n\n%s\n\n", r.Title(), r.Summary()), func(b *strings.Builder, t *Table) error {
		return t.WriteMarkdown(b, 2)
	})
}

// WriteText writes the report with aligned columns for a terminal, a blank
// line after each table.
func (r *ReportResult) WriteText(w io.Writer) error {
	return r.write(w, fmt.Sprintf("%s\n%s\n\n", r.Title(), r.Summary()), func(b *strings.Builder, t *Table) error {
		err := t.WriteText(b)
		b.WriteString("\n")
		return err
	})
}

// write writes head and then each of the report's tables as table writes
// it, all at once.
func (r *ReportResult) write(w io.Writer, head string, table func(*strings.Builder, *Table) error) error {
	var b strings.Builder
	b.WriteString(head)
	for _, t := range r.Tables() {
		if err := table(&b, t); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes the result as indented JSON.
func (r *ReportResult) WriteJSON(w io.Writer) error {
	return writeJSON(w, r, "report")
}

// writeJSON writes v, a result, as indented JSON; what names it in errors.
func writeJSON(w io.Writer, v any, what string) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("encode %s: %w", what, err)
	}
	return nil
}

// WriteChart draws the latency distributions read from the histograms:
// per upstream attempt, per model request, per model TTFT.
func (r *ReportResult) WriteChart(path string) error {
	ups := chartPanel{title: "Upstream attempt latency"}
	for _, u := range r.Upstreams {
		ups.series = append(ups.series, quantileSeries(u.Name, u.quantiles))
	}
	lat := chartPanel{title: "Request latency by model"}
	ttft := chartPanel{title: "Time to first token by model"}
	for _, m := range append(append([]ModelReport(nil), r.Models...), r.Total) {
		lat.series = append(lat.series, quantileSeries(m.Name, m.latency))
		ttft.series = append(ttft.series, quantileSeries(m.Name, m.ttft))
	}
	return writeChart(path, fmt.Sprintf("%s (from histograms)", r.Title()), []chartPanel{ups, lat, ttft})
}

func quantileSeries(name string, q map[float64]float64) chartSeries {
	s := chartSeries{name: name}
	for _, qt := range quantiles {
		if v, ok := q[qt]; ok {
			s.points = append(s.points, plotter.XY{X: qt * 100, Y: v})
		}
	}
	return s
}
