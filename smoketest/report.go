package smoketest

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Status is a check's outcome.
type Status string

const (
	Pass Status = "pass"
	Fail Status = "fail"
	// Skip marks a check that could not run because one it needs failed
	// (no working key, no model); it counts as not passed.
	Skip Status = "skip"
	// NotApplicable marks a check of a part the stack does not have (no
	// model server, no usage ledger): nothing to verify, so it does not
	// fail the run, and a stack without the part can pass the deploy gate.
	NotApplicable Status = "n/a"
)

// Names of the checks, stable for scripts reading the JSON report.
const (
	CheckHealth           = "health"
	CheckReady            = "ready"
	CheckAuth             = "auth"
	CheckGPU              = "gpu"
	CheckCompletion       = "completion"
	CheckStream           = "stream"
	CheckCache            = "cache"
	CheckLatency          = "latency"
	CheckMetrics          = "metrics"
	CheckPrometheusTarget = "prometheus_target"
	CheckPrometheusRules  = "prometheus_rules"
	CheckModelServer      = "model_server"
	CheckLedger           = "ledger"
)

// Step is one check's result. Hint says what to do when it did not pass.
type Step struct {
	Name       string  `json:"name"`
	Title      string  `json:"title"`
	Status     Status  `json:"status"`
	Detail     string  `json:"detail"`
	Hint       string  `json:"hint,omitempty"`
	DurationMS float64 `json:"duration_ms"`
}

func (s *Step) passf(format string, args ...any) {
	s.Status, s.Detail = Pass, fmt.Sprintf(format, args...)
}

func (s *Step) fail(detail, hint string) {
	s.Status, s.Detail, s.Hint = Fail, detail, hint
}

// Percentiles of a set of durations, in milliseconds.
type Percentiles struct {
	P50 float64 `json:"p50_ms"`
	P95 float64 `json:"p95_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// LatencyStats is the latency check's measurement. Total is what the client
// saw; Gateway is the gateway's own time and Upstream its wait on upstreams,
// both from the Server-Timing header; Network is the rest (client to
// gateway and back, load balancer, TLS).
type LatencyStats struct {
	Requests    int         `json:"requests"`
	Concurrency int         `json:"concurrency"`
	Errors      int         `json:"errors"`
	BudgetP95MS float64     `json:"budget_p95_ms"`
	Total       Percentiles `json:"total"`
	Gateway     Percentiles `json:"gateway"`
	Upstream    Percentiles `json:"upstream"`
	Network     Percentiles `json:"network"`
	// ErrorSamples are the first few distinct failures.
	ErrorSamples []string `json:"error_samples,omitempty"`
}

// Report is the whole run, printed as a table or written as JSON.
type Report struct {
	Stack         string        `json:"stack,omitempty"`
	GatewayURL    string        `json:"gateway_url"`
	PrometheusURL string        `json:"prometheus_url,omitempty"`
	ImageRef      string        `json:"image_ref,omitempty"`
	Model         string        `json:"model,omitempty"`
	Started       time.Time     `json:"started"`
	DurationMS    float64       `json:"duration_ms"`
	Passed        bool          `json:"passed"`
	Steps         []Step        `json:"steps"`
	Latency       *LatencyStats `json:"latency,omitempty"`
}

// Step returns the named check's result, or nil.
func (r *Report) Step(name string) *Step {
	for i := range r.Steps {
		if r.Steps[i].Name == name {
			return &r.Steps[i]
		}
	}
	return nil
}

// Failed lists the checks that did not pass (failed or skipped); one not
// applicable to the stack is not among them.
func (r *Report) Failed() []Step {
	var out []Step
	for _, s := range r.Steps {
		if s.Status != Pass && s.Status != NotApplicable {
			out = append(out, s)
		}
	}
	return out
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// WriteTable prints the report for a person: one line per check, the
// latency breakdown, and for every check that did not pass, what to do.
func (r *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "\nRelaygate smoke test")
	if r.Stack != "" {
		fmt.Fprintf(&b, " of stack %s", r.Stack)
	}
	fmt.Fprintf(&b, ": gateway %s", r.GatewayURL)
	if r.ImageRef != "" {
		fmt.Fprintf(&b, ", image %s", r.ImageRef)
	}
	b.WriteString("\n\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tRESULT\tTIME\tDETAIL")
	for _, s := range r.Steps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, strings.ToUpper(string(s.Status)), formatMS(s.DurationMS), oneLine(s.Detail))
	}
	_ = tw.Flush()

	if l := r.Latency; l != nil && l.Requests > 0 {
		fmt.Fprintf(&b, "\nLatency: %d requests at concurrency %d, %d errors, p95 budget %s\n",
			l.Requests, l.Concurrency, l.Errors, formatMS(l.BudgetP95MS))
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "\tp50\tp95\tp99\tmax\t")
		for _, row := range []struct {
			name string
			p    Percentiles
		}{{"total (client)", l.Total}, {"gateway overhead", l.Gateway}, {"upstream", l.Upstream}, {"network", l.Network}} {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", row.name, formatMS(row.p.P50), formatMS(row.p.P95), formatMS(row.p.P99), formatMS(row.p.Max))
		}
		_ = tw.Flush()
	}

	failed := r.Failed()
	if len(failed) == 0 {
		na := 0
		for _, s := range r.Steps {
			if s.Status == NotApplicable {
				na++
			}
		}
		if na > 0 {
			fmt.Fprintf(&b, "\nPASSED: all %d checks in %s (%d not applicable to this stack).\n", len(r.Steps), formatMS(r.DurationMS), na)
		} else {
			fmt.Fprintf(&b, "\nPASSED: all %d checks in %s.\n", len(r.Steps), formatMS(r.DurationMS))
		}
	} else {
		fmt.Fprintf(&b, "\nFAILED: %d of %d checks did not pass. What to do:\n", len(failed), len(r.Steps))
		for _, s := range failed {
			fmt.Fprintf(&b, "\n  %s (%s): %s\n", s.Name, s.Status, oneLine(s.Detail))
			if s.Hint != "" {
				fmt.Fprintf(&b, "    → %s\n", oneLine(s.Hint))
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	if err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

func formatMS(ms float64) string {
	switch {
	case ms <= 0:
		return "-"
	case ms < 1:
		return fmt.Sprintf("%.0fµs", ms*1000)
	case ms < 10:
		return fmt.Sprintf("%.1fms", ms)
	case ms < 10000:
		return fmt.Sprintf("%.0fms", ms)
	default:
		return fmt.Sprintf("%.1fs", ms/1000)
	}
}

// oneLine keeps a table row on one line whatever an error message holds.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// redact removes every occurrence of secret from the report's free text.
// Checks never put the key there on purpose; this is the guard against an
// error message from a library or a server that echoes it.
func (r *Report) redact(secret string) {
	if len(secret) < 4 {
		return
	}
	clean := func(s string) string { return redactSecret(s, secret) }
	for i := range r.Steps {
		r.Steps[i].Detail = clean(r.Steps[i].Detail)
		r.Steps[i].Hint = clean(r.Steps[i].Hint)
	}
	r.GatewayURL, r.PrometheusURL = clean(r.GatewayURL), clean(r.PrometheusURL)
	if r.Latency != nil {
		for i, e := range r.Latency.ErrorSamples {
			r.Latency.ErrorSamples[i] = clean(e)
		}
	}
}

func redactSecret(s, secret string) string {
	if len(secret) < 4 {
		return s
	}
	return strings.ReplaceAll(s, secret, "[redacted]")
}
