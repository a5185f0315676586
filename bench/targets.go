package bench

import (
	"encoding/json"
	"fmt"
	"math"
)

// Verdicts of a target.
const (
	Met         = "MET"
	NotMet      = "NOT MET"
	NotMeasured = "NOT MEASURED"
)

// Target is one of issue 6's goals, judged on this run.
type Target struct {
	Name    string `json:"name"`
	Subject string `json:"subject"`
	// Measured and Goal are for people; Value and Limit the same numbers
	// in Unit, for scripts.
	Measured string  `json:"measured"`
	Goal     string  `json:"goal"`
	Value    float64 `json:"value"`
	Limit    float64 `json:"limit"`
	Unit     string  `json:"unit"`
	// HigherIsBetter: the goal is Value ≥ Limit (throughput); otherwise
	// Value ≤ Limit.
	HigherIsBetter bool `json:"higher_is_better"`
	// Ratio is Value / Limit (NaN when Limit is not positive).
	Ratio   float64 `json:"ratio"`
	Verdict string  `json:"verdict"`
	Note    string  `json:"note,omitempty"`
}

// MarshalJSON writes NaN numbers (nothing measured) as null.
func (t Target) MarshalJSON() ([]byte, error) {
	type plain Target
	return json.Marshal(struct {
		plain
		Value any `json:"value"`
		Limit any `json:"limit"`
		Ratio any `json:"ratio"`
	}{plain(t), jsonNum(t.Value), jsonNum(t.Limit), jsonNum(t.Ratio)})
}

// MarshalJSON writes NaN percentiles (an empty sample) as null.
func (p Percentiles) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{
		"p50_us": jsonNum(p.P50), "p90_us": jsonNum(p.P90), "p95_us": jsonNum(p.P95), "p99_us": jsonNum(p.P99),
		"p999_us": jsonNum(p.P999), "max_us": jsonNum(p.Max),
	})
}

func jsonNum(f float64) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return f
}

func (t Target) verdictText() string {
	if t.Verdict != NotMet || math.IsNaN(t.Ratio) || math.IsInf(t.Ratio, 0) {
		return t.Verdict
	}
	miss := 100 * (t.Ratio - 1)
	if t.HigherIsBetter {
		miss = 100 * (1 - t.Ratio)
	}
	return fmt.Sprintf("%s (misses by %.0f%%)", NotMet, miss)
}

// judge fills Ratio and Verdict from Value and Limit.
func (t *Target) judge() {
	t.Ratio = math.NaN()
	if t.Limit > 0 {
		t.Ratio = t.Value / t.Limit
	}
	switch {
	case math.IsNaN(t.Value) || math.IsNaN(t.Limit):
		t.Verdict = NotMeasured
	case t.HigherIsBetter && t.Value >= t.Limit, !t.HigherIsBetter && t.Value <= t.Limit:
		t.Verdict = Met
	default:
		t.Verdict = NotMet
	}
}

func notMeasured(name, subject, why string) Target {
	nan := math.NaN()
	return Target{Name: name, Subject: subject, Value: nan, Limit: nan, Ratio: nan, Verdict: NotMeasured, Note: why}
}

// Goals from issue 6.
const (
	goalOverheadP99US   = 50.0
	goalTTFBAddedP50US  = 200.0
	goalIdleRSSBytes    = 256 << 20
	goalCacheHitP99US   = 1000.0
	goalAddedP99VsNginx = 1.5
	goalCacheHitRatio   = 0.99
	// heldBackTolerance is the share of paced gaps by which a gateway may
	// exceed the reference count of coalesced events (the larger of the
	// direct simulator's and nginx's) before a chunk counts as held back:
	// scheduling on a busy machine coalesces a few events for every subject.
	heldBackTolerance = 0.001
)

// evaluate judges the run against issue 6's targets.
func evaluate(r *Report, cfg Config) []Target {
	find := func(scenario, label string) *Row {
		for i := range r.Scenarios {
			if r.Scenarios[i].Name != scenario {
				continue
			}
			for j := range r.Scenarios[i].Rows {
				if row := &r.Scenarios[i].Rows[j]; row.Label == label {
					return row
				}
			}
		}
		return nil
	}
	key := fmt.Sprintf("completions@%d", cfg.KeyRate)
	var out []Target
	for _, g := range []string{subjectGateway, subjectGatewayCache} {
		out = append(out, vsNginx(find("saturation", g), find("saturation", subjectNginx), g,
			"saturation throughput ≥ nginx (1 worker)", 1, true,
			func(row *Row) (float64, bool) { return row.RPS, row.Requests > 0 }, "rps"))
		out = append(out, vsNginx(find(key, g), find(key, subjectNginx), g,
			fmt.Sprintf("added p50 at %d rps ≤ nginx's", cfg.KeyRate), 1, false,
			func(row *Row) (float64, bool) { return addedOf(row, func(p Percentiles) float64 { return p.P50 }) }, "µs"))
		out = append(out, vsNginx(find(key, g), find(key, subjectNginx), g,
			fmt.Sprintf("added p99 at %d rps ≤ 1.5× nginx's", cfg.KeyRate), goalAddedP99VsNginx, false,
			func(row *Row) (float64, bool) { return addedOf(row, func(p Percentiles) float64 { return p.P99 }) }, "µs"))
		out = append(out, overheadTarget(find(key, g), g, cfg.KeyRate))
		out = append(out, ttfbTarget(find("streams", g), g))
		out = append(out, heldBackTarget(find("streams", g), find("streams", subjectDirect), find("streams", subjectNginx), g))
	}
	out = append(out, idleTarget(find("idle", subjectGateway), subjectGateway, cfg.IdleStreams))
	out = append(out, cacheTarget(find("cache", subjectGatewayCache), subjectGatewayCache, cfg.KeyRate))
	return out
}

func addedOf(row *Row, pick func(Percentiles) float64) (float64, bool) {
	if row.Added == nil || row.Requests == 0 {
		return 0, false
	}
	return pick(*row.Added), true
}

// vsNginx compares a gateway's number with factor × nginx's.
func vsNginx(gw, ng *Row, subject, name string, factor float64, higher bool, value func(*Row) (float64, bool), unit string) Target {
	if gw == nil {
		return notMeasured(name, subject, "scenario not run")
	}
	if ng == nil {
		return notMeasured(name, subject, "nginx not run")
	}
	v, ok := value(gw)
	n, nok := value(ng)
	if !ok || !nok {
		return notMeasured(name, subject, "no successful requests to compare")
	}
	t := Target{Name: name, Subject: subject, Value: v, Limit: factor * n, Unit: unit, HigherIsBetter: higher}
	t.judge()
	if unit == "rps" {
		t.Measured, t.Goal = fmt.Sprintf("%.0f rps", v), fmt.Sprintf("≥ %.0f rps (nginx)", t.Limit)
	} else {
		t.Measured = fmtMicros(v)
		if v == 0 {
			t.Measured = "0µs"
		}
		t.Goal = fmt.Sprintf("≤ %s (nginx %s × %g)", fmtMicros(t.Limit), fmtMicros(n), factor)
		if t.Limit <= 0 {
			t.Note = "nginx added nothing measurable over direct here, so no ratio; the difference is within noise when both are near 0"
		}
	}
	return t
}

func overheadTarget(row *Row, subject string, rate int) Target {
	name := fmt.Sprintf("relaygate_overhead_seconds p99 at %d rps ≤ 50µs", rate)
	if row == nil || row.Overhead == nil {
		return notMeasured(name, subject, "no overhead histogram scraped")
	}
	t := Target{Name: name, Subject: subject, Value: row.Overhead.P99, Limit: goalOverheadP99US, Unit: "µs",
		Measured: fmtMicros(row.Overhead.P99), Goal: "≤ 50µs",
		Note: fmt.Sprintf("from %d observations; buckets …20µs, 40µs, 80µs… so the value is interpolated within one", row.OverheadCount)}
	t.judge()
	return t
}

func ttfbTarget(row *Row, subject string) Target {
	const name = "stream added TTFB p50 ≤ 200µs"
	if row == nil || row.TTFBAdded == nil || row.Requests == 0 {
		return notMeasured(name, subject, "streams scenario not run or no streams")
	}
	t := Target{Name: name, Subject: subject, Value: row.TTFBAdded.P50, Limit: goalTTFBAddedP50US, Unit: "µs",
		Measured: fmtMicros(row.TTFBAdded.P50), Goal: "≤ 200µs"}
	t.judge()
	return t
}

func heldBackTarget(row, direct, nginx *Row, subject string) Target {
	const name = "no stream chunk held back"
	if row == nil || direct == nil || row.Requests == 0 {
		return notMeasured(name, subject, "streams scenario not run or no streams")
	}
	ref, refName := direct.HeldBack, "direct"
	if nginx != nil && nginx.Requests > 0 && nginx.HeldBack > ref {
		ref, refName = nginx.HeldBack, "nginx"
	}
	limit := float64(ref) + math.Ceil(heldBackTolerance*float64(row.PacedGaps))
	t := Target{Name: name, Subject: subject, Value: float64(row.HeldBack), Limit: limit, Unit: "events",
		Measured: fmt.Sprintf("%d of %d gaps", row.HeldBack, row.PacedGaps),
		Goal:     fmt.Sprintf("≤ %.0f (%s's %d + 0.1%%)", limit, refName, ref),
		Note: "an event counts as held back when it reaches the client less than half a chunk delay after the one before; " +
			"a busy machine makes every proxy coalesce a few, so the gateway is judged against direct's and nginx's count"}
	t.judge()
	return t
}

func idleTarget(row *Row, subject string, asked int) Target {
	name := fmt.Sprintf("%d idle streams ≤ 256MiB RSS", asked)
	if row == nil || row.Idle == nil {
		return notMeasured(name, subject, "idle scenario not run")
	}
	i := row.Idle
	t := Target{Name: name, Subject: subject, Value: float64(i.RSSAtAsked), Limit: goalIdleRSSBytes, Unit: "bytes",
		Measured: fmtMiB(float64(i.RSSAtAsked)), Goal: "≤ 256.0MiB"}
	if i.Extrapolated {
		t.Measured += " (extrapolated)"
		t.Note = fmt.Sprintf("%d streams held, %s per stream; %s", i.Held, fmtBytes(i.BytesPerStream), i.Limit)
	}
	t.judge()
	if row.Errors > 0 {
		t.Verdict, t.Note = NotMet, fmt.Sprintf("%d streams failed: %s", row.Errors, row.FirstError)
	}
	return t
}

func cacheTarget(row *Row, subject string, rate int) Target {
	name := fmt.Sprintf("cache hit p99 at %d rps ≤ 1ms", rate)
	if row == nil || row.Requests == 0 {
		return notMeasured(name, subject, "cache scenario not run")
	}
	t := Target{Name: name, Subject: subject, Value: row.Latency.P99, Limit: goalCacheHitP99US, Unit: "µs",
		Measured: fmtMicros(row.Latency.P99), Goal: "≤ 1ms, ≥ 99% hits"}
	t.judge()
	if row.CacheHitRatio < goalCacheHitRatio {
		t.Verdict = NotMet
		t.Note = fmt.Sprintf("only %.1f%% of answers were cache hits (X-Cache: HIT), so this p99 is not a cache hit's", 100*row.CacheHitRatio)
	}
	return t
}
