package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is everything one run measured; report.json is this, and
// report.txt its tables.
type Report struct {
	Started   time.Time        `json:"started"`
	Seconds   float64          `json:"seconds"`
	Machine   Machine          `json:"machine"`
	Settings  Settings         `json:"settings"`
	Scenarios []ScenarioResult `json:"scenarios"`
	Targets   []Target         `json:"targets"`
	// StreamAPIs compares the gateway's Messages and Responses streams
	// with its Chat Completions ones (issue 12).
	StreamAPIs []StreamAPIComparison `json:"stream_apis,omitempty"`
	Profile    *Profile              `json:"profile,omitempty"`
	Notes      []string              `json:"notes,omitempty"`
}

// Machine says what the numbers were measured on and how busy it was: the
// load generator, the simulators and the subject share its CPUs.
type Machine struct {
	CPUs        int        `json:"cpus"`
	Kernel      string     `json:"kernel"`
	GoVersion   string     `json:"go_version"`
	Nginx       string     `json:"nginx,omitempty"`
	NoFileLimit uint64     `json:"nofile_limit"`
	LoadStart   [3]float64 `json:"loadavg_start"`
	LoadEnd     [3]float64 `json:"loadavg_end"`
	// BusyPercent is the share of all CPUs busy during the run, the suite
	// itself included.
	BusyPercent float64 `json:"busy_percent"`
}

// ScenarioResult is one scenario's rows.
type ScenarioResult struct {
	Name  string `json:"name"`
	Title string `json:"title"`
	Kind  string `json:"kind"`
	// API is a streams scenario's API: chat, messages or responses.
	API        string  `json:"api,omitempty"`
	Rate       int     `json:"rate,omitempty"`
	Workers    int     `json:"workers,omitempty"`
	Rounds     int     `json:"rounds"`
	RunSeconds float64 `json:"run_seconds,omitempty"`
	Rows       []Row   `json:"rows"`
}

// Row is one subject's results in a scenario, all rounds together.
// Latencies are at the client: request sent to answer read (streams: to
// [DONE]). Added ones are the subject's percentile minus the direct
// simulator's.
type Row struct {
	Label      string `json:"label"`
	Subject    string `json:"subject"`
	Requests   int    `json:"requests"`
	Errors     int    `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	// RPS is answered requests (or streams) per second of run time.
	RPS     float64      `json:"rps,omitempty"`
	Latency Percentiles  `json:"latency"`
	Added   *Percentiles `json:"added,omitempty"`
	// CPUPerRequestUS is the subject's own CPU time (user + system, all
	// its processes) per answered request.
	CPUPerRequestUS float64 `json:"cpu_per_request_us,omitempty"`
	MaxRSSBytes     int64   `json:"max_rss_bytes,omitempty"`

	// Streams: time to the first event and to the first content event
	// (TTFT: the one that compares across APIs, whose opening events
	// differ), gaps between paced events, and how many paced events came
	// together with the next (held back).
	TTFB      *Percentiles `json:"ttfb,omitempty"`
	TTFBAdded *Percentiles `json:"ttfb_added,omitempty"`
	TTFT      *Percentiles `json:"ttft,omitempty"`
	TTFTAdded *Percentiles `json:"ttft_added,omitempty"`
	Gap       *Percentiles `json:"gap,omitempty"`
	GapAdded  *Percentiles `json:"gap_added,omitempty"`
	HeldBack  int          `json:"held_back,omitempty"`
	PacedGaps int          `json:"paced_gaps,omitempty"`

	CacheHits     int     `json:"cache_hits,omitempty"`
	CacheHitRatio float64 `json:"cache_hit_ratio,omitempty"`

	// Overhead is relaygate_overhead_seconds over the runs, from the
	// gateway's /metrics (bucket-interpolated, as histogram_quantile).
	Overhead      *Percentiles `json:"overhead_histogram,omitempty"`
	OverheadCount int64        `json:"overhead_count,omitempty"`

	Idle *IdleStreams `json:"idle,omitempty"`
}

// WriteText writes the report as plain-text tables.
func (r *Report) WriteText(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "Relaygate benchmark, %s, %.0fs\n", r.Started.Format(time.RFC3339), r.Seconds)
	fmt.Fprintf(w, "machine: %d CPUs shared by load generator, simulators and subjects; kernel %s; %s", m.CPUs, m.Kernel, m.GoVersion)
	if m.Nginx != "" {
		fmt.Fprintf(w, "; %s", m.Nginx)
	}
	fmt.Fprintf(w, "\nload average %.2f %.2f %.2f at start, %.2f %.2f %.2f at end; CPUs %.0f%% busy during the run\n",
		m.LoadStart[0], m.LoadStart[1], m.LoadStart[2], m.LoadEnd[0], m.LoadEnd[1], m.LoadEnd[2], m.BusyPercent)
	s := r.Settings
	fmt.Fprintf(w, "each subject: %d interleaved rounds of %gs after a %gs warm-up; answers of %d tokens\n\n",
		s.Rounds, s.RunSeconds, s.WarmupSeconds, s.Tokens)

	for _, sc := range r.Scenarios {
		fmt.Fprintf(w, "== %s: %s\n", sc.Name, sc.Title)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		switch sc.Kind {
		case string(kindIdle):
			writeIdle(tw, sc)
		case string(kindStreams):
			writeStreams(tw, sc)
		default:
			writeRequests(tw, sc)
		}
		_ = tw.Flush()
		for _, row := range sc.Rows {
			if row.Errors > 0 {
				fmt.Fprintf(w, "   %s: %d errors, first: %s\n", row.Label, row.Errors, row.FirstError)
			}
		}
		fmt.Fprintln(w)
	}

	if len(r.StreamAPIs) > 0 {
		writeStreamAPIs(w, r.StreamAPIs)
		fmt.Fprintln(w)
	}

	fmt.Fprintln(w, "== targets (issue 6)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "target\tsubject\tmeasured\tgoal\tratio\tverdict\t")
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", t.Name, t.Subject, t.Measured, t.Goal, fmtRatio(t.Ratio), t.verdictText())
	}
	_ = tw.Flush()
	for _, t := range r.Targets {
		if t.Note != "" {
			fmt.Fprintf(w, "   %s (%s): %s\n", t.Name, t.Subject, t.Note)
		}
	}

	if p := r.Profile; p != nil {
		fmt.Fprintf(w, "\n== CPU profile: %s at saturation (%.0f rps, %.1fs, perf cpu-clock %s Hz)\n", p.Subject, p.RPS, p.Seconds, perfFrequency)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "self %\tfunction\t\tcumulative %\tfunction\t")
		for i := range max(len(p.Self), len(p.Cumulative)) {
			var a, b ProfileLine
			if i < len(p.Self) {
				a = p.Self[i]
			}
			if i < len(p.Cumulative) {
				b = p.Cumulative[i]
			}
			fmt.Fprintf(tw, "%5.2f\t%s\t\t%5.2f\t%s\t\n", a.Percent, a.Symbol, b.Percent, b.Symbol)
		}
		_ = tw.Flush()
		if len(p.Gateway) > 0 {
			fmt.Fprintln(w, "gateway code and its libraries (cumulative %):")
			for _, l := range p.Gateway {
				fmt.Fprintf(w, "  %5.2f  %s\n", l.Percent, l.Symbol)
			}
		}
		fmt.Fprintf(w, "   full reports: %s\n", strings.Join(p.Files, ", "))
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "\nnote: %s\n", n)
	}
}

func writeRequests(w io.Writer, sc ScenarioResult) {
	cache := sc.Name == "cache"
	overhead := false
	for _, row := range sc.Rows {
		overhead = overhead || row.Overhead != nil
	}
	head := "subject\trps\tp50\tp90\tp99\tp99.9\t+p50\t+p90\t+p99\t+p99.9\tCPU/req\tRSS\terrors\t"
	if cache {
		head += "hits\t"
	}
	if overhead {
		head += "overhead p50\tp99\tp99.9\t"
	}
	fmt.Fprintln(w, head)
	for _, row := range sc.Rows {
		line := fmt.Sprintf("%s\t%.0f\t%s\t%s\t", row.Label, row.RPS, fmtPercentiles(row.Latency), fmtAdded(row.Added))
		line += fmt.Sprintf("%s\t%s\t%d\t", fmtMicros(row.CPUPerRequestUS), fmtMiB(float64(row.MaxRSSBytes)), row.Errors)
		if cache {
			line += fmt.Sprintf("%.1f%%\t", 100*row.CacheHitRatio)
		}
		if overhead {
			if o := row.Overhead; o != nil {
				line += fmt.Sprintf("%s\t%s\t%s\t", fmtMicros(o.P50), fmtMicros(o.P99), fmtMicros(o.P999))
			} else {
				line += "\t\t\t"
			}
		}
		fmt.Fprintln(w, line)
	}
}

func writeStreams(w io.Writer, sc ScenarioResult) {
	fmt.Fprintln(w, "subject\tstreams/s\tTTFB p50\tp99\t+TTFB p50\t+p99\tTTFT p50\tp99\t+TTFT p50\t+p99\tgap p50\tp99\t+gap p50\t+p99\theld back\tstream p50\tp99\t+p50\t+p99\tCPU/stream\tRSS\terrors\t")
	for _, row := range sc.Rows {
		t, tt, g := orNaN(row.TTFB), orNaN(row.TTFT), orNaN(row.Gap)
		ta, tta, ga, a := orNaN(row.TTFBAdded), orNaN(row.TTFTAdded), orNaN(row.GapAdded), orNaN(row.Added)
		fmt.Fprintf(w, "%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n",
			row.Label, row.RPS, fmtMicros(t.P50), fmtMicros(t.P99), fmtMicros(ta.P50), fmtMicros(ta.P99),
			fmtMicros(tt.P50), fmtMicros(tt.P99), fmtMicros(tta.P50), fmtMicros(tta.P99),
			fmtMicros(g.P50), fmtMicros(g.P99), fmtMicros(ga.P50), fmtMicros(ga.P99),
			row.HeldBack, row.PacedGaps, fmtMicros(row.Latency.P50), fmtMicros(row.Latency.P99),
			fmtMicros(a.P50), fmtMicros(a.P99),
			fmtMicros(row.CPUPerRequestUS), fmtMiB(float64(row.MaxRSSBytes)), row.Errors)
	}
}

func writeIdle(w io.Writer, sc ScenarioResult) {
	fmt.Fprintln(w, "subject\tasked\theld\tRSS before\tRSS held\tper stream\tRSS at asked\terrors\t")
	for _, row := range sc.Rows {
		i := row.Idle
		if i == nil {
			fmt.Fprintf(w, "%s\t\t\t\t\t\t\t%d\t\n", row.Label, row.Errors)
			continue
		}
		at := fmtMiB(float64(i.RSSAtAsked))
		if i.Extrapolated {
			at += " (extrapolated)"
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%d\t\n", row.Label, i.Asked, i.Held,
			fmtMiB(float64(i.Points[0].RSS)), fmtMiB(float64(i.Points[len(i.Points)-1].RSS)),
			fmtBytes(i.BytesPerStream), at, row.Errors)
	}
	for _, row := range sc.Rows {
		if row.Idle != nil && row.Idle.Limit != "" {
			fmt.Fprintf(w, "   %s: %s\n", row.Label, row.Idle.Limit)
		}
	}
}

func orNaN(p *Percentiles) Percentiles {
	if p == nil {
		n := math.NaN()
		return Percentiles{n, n, n, n, n, n}
	}
	return *p
}

func fmtPercentiles(p Percentiles) string {
	v := p.values()
	return fmt.Sprintf("%s\t%s\t%s\t%s", fmtMicros(v[0]), fmtMicros(v[1]), fmtMicros(v[2]), fmtMicros(v[3]))
}

func fmtAdded(p *Percentiles) string {
	if p == nil {
		return "\t\t\t"
	}
	return fmtPercentiles(*p)
}

// fmtMicros prints a duration given in microseconds with a unit that keeps
// three significant figures.
func fmtMicros(us float64) string {
	switch a := math.Abs(us); {
	case math.IsNaN(us) || us == 0:
		return "-"
	case a < 1000:
		return fmt.Sprintf("%.0fµs", us)
	case a < 100_000:
		return fmt.Sprintf("%.2fms", us/1000)
	default:
		return fmt.Sprintf("%.0fms", us/1000)
	}
}

func fmtMiB(b float64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fMiB", b/(1<<20))
}

func fmtBytes(b float64) string {
	switch {
	case math.Abs(b) >= 1<<20:
		return fmt.Sprintf("%.1fMiB", b/(1<<20))
	case math.Abs(b) >= 1<<10:
		return fmt.Sprintf("%.1fKiB", b/(1<<10))
	default:
		return fmt.Sprintf("%.0fB", b)
	}
}

func fmtRatio(r float64) string {
	if math.IsNaN(r) || math.IsInf(r, 0) {
		return "-"
	}
	return fmt.Sprintf("%.2f×", r)
}
