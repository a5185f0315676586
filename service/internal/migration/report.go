package migration

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/relaygate/relaygate/service/config"
)

// month is the period monthly run-rates are projected to.
const month = 30 * 24 * time.Hour

// quantiles read from each latency histogram: the table's p50/p95/p99 and
// enough more for the chart's curves.
var quantiles = []float64{0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99}

// ErrNoData is returned when Prometheus holds no gateway metrics in the
// window: a wrong URL, filter or window, not a gateway with no traffic.
var ErrNoData = errors.New("no relaygate metrics in the window")

// ReportOptions configures Report.
type ReportOptions struct {
	// API is a Prometheus HTTP API client; Source names it in the output.
	API    promv1.API
	Source string
	// Window is how far back from End the report looks (1h, 24h, 30d).
	Window time.Duration
	// End is the end of the window; zero means now.
	End time.Time
	// Match is extra label matchers put in every selector, e.g.
	// `env="prod"` when one Prometheus scrapes several deployments.
	Match string
	// Config gives the models' reference prices, to split savings between
	// routing and the cache and to state reference cost per million tokens.
	// Nil leaves those figures out.
	Config *config.Config
	// By adds the table per team (ByTeam) or per named key (ByKey).
	By string
}

// Report reads what the gateway served over the window from Prometheus.
//
// Counts are Prometheus's increase() over the window, so they carry its
// usual approximations: a counter series born inside the window loses what
// it counted before its first scrape, and the ends of the window are
// extrapolated from the samples nearest them. Both are within one scrape
// interval's traffic. Percentiles come from the histograms' buckets and are
// interpolated within the bucket they fall in.
func Report(ctx context.Context, opts ReportOptions) (*ReportResult, error) {
	if opts.API == nil {
		return nil, errors.New("report: no Prometheus client")
	}
	if opts.Window < time.Minute {
		return nil, fmt.Errorf("report: window %s is shorter than a minute", opts.Window)
	}
	if opts.End.IsZero() {
		opts.End = time.Now()
	}
	if opts.By != "" && opts.By != ByTeam && opts.By != ByKey {
		return nil, fmt.Errorf("report: by %q: use team or key", opts.By)
	}
	q := &querier{api: opts.API, end: opts.End, window: model.Duration(opts.Window).String(), match: opts.Match}
	res := &ReportResult{
		Source: opts.Source, Match: opts.Match,
		Window: model.Duration(opts.Window).String(), window: opts.Window,
		Start: opts.End.Add(-opts.Window).UTC(), End: opts.End.UTC(),
	}

	earliest, err := q.earliestSample(ctx, opts.Window)
	if err != nil {
		return nil, err
	}
	if earliest.After(res.Start) {
		res.Start = earliest.UTC()
	}
	res.Covered = max(res.End.Sub(res.Start), time.Second)
	res.CoveredSeconds = res.Covered.Seconds()

	if err := res.read(ctx, q, opts.Config); err != nil {
		return nil, err
	}
	if opts.By != "" {
		res.By = opts.By
		if err := res.readGroups(ctx, q, opts.By, float64(month)/float64(res.Covered)); err != nil {
			return nil, err
		}
	}
	res.Notes = append(res.Notes, q.warnings...)
	return res, nil
}

// ParseWindow reads a report window in Prometheus's notation: 1h, 24h,
// 7d, 30d, 1w.
func ParseWindow(s string) (time.Duration, error) {
	d, err := model.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("window %q: use a duration such as 1h, 24h or 30d", s)
	}
	if time.Duration(d) < time.Minute {
		return 0, fmt.Errorf("window %q is shorter than a minute", s)
	}
	return time.Duration(d), nil
}

// querier runs the report's PromQL at one instant over one window.
type querier struct {
	api      promv1.API
	end      time.Time
	window   string
	match    string
	warnings []string
}

// sel is a selector of metric with the user's matchers.
func (q *querier) sel(metric string) string {
	if q.match == "" {
		return metric
	}
	return metric + "{" + q.match + "}"
}

// increase is `sum by (labels) (increase(metric[window]))`.
func (q *querier) increase(metric string, by ...string) string {
	return fmt.Sprintf("sum by (%s) (increase(%s[%s]))", strings.Join(by, ", "), q.sel(metric), q.window)
}

// checked vets what Prometheus answered to promql: the error named with
// the query, its warnings kept for the report's notes, the value of the
// type the caller asked for.
func checked[T model.Vector | model.Matrix](q *querier, promql string, v model.Value, warnings promv1.Warnings, err error) (T, error) {
	var want T
	if err != nil {
		return want, fmt.Errorf("prometheus query %s: %w", promql, err)
	}
	for _, w := range warnings {
		q.warnings = append(q.warnings, "Prometheus warned: "+w)
	}
	got, ok := v.(T)
	if !ok {
		return want, fmt.Errorf("prometheus query %s: got a %s, want a %s", promql, v.Type(), model.Value(want).Type())
	}
	return got, nil
}

func (q *querier) vector(ctx context.Context, promql string) (model.Vector, error) {
	return q.vectorAt(ctx, promql, q.end)
}

// vectorAt evaluates an instant query at t.
func (q *querier) vectorAt(ctx context.Context, promql string, t time.Time) (model.Vector, error) {
	v, warnings, _, err := q.api.Query(ctx, promql, t)
	vec, err := checked[model.Vector](q, promql, v, warnings, err)
	if err != nil {
		return nil, err
	}
	return vec, nil
}

// earliestSample finds when, within the window, Prometheus first has the
// gateway's metrics. A window longer than Prometheus keeps (or older than
// the gateway) covers less than asked, and run-rates must divide by what
// was covered. relaygate_inflight_requests is a gauge every gateway exports
// from its start, so its samples mark the gateway's presence.
//
// It finds the first sample without pulling a month of samples. A range
// query counts the gauge's samples in each of about 720 steps that tile the
// window back from its end; the raw samples of the first step with any give
// the first exactly. Counting over a range as long as the step sees every
// sample in it, where an instant selector at each step (timestamp(), or a
// subquery of it) sees only the lookback delta before the step, 5m by
// default: past a 60h window that misses a gateway that ran only between
// two steps, and the report said there was no data, or covered too little
// time and inflated the monthly run-rates. When the first sample is not at
// the window's start, one more query asks whether the gateway was present
// there (a sample within the lookback before it), as it is when it ran
// before the window: the window is then covered from its start.
func (q *querier) earliestSample(ctx context.Context, window time.Duration) (time.Time, error) {
	step := max(window/720, time.Second).Truncate(time.Second)
	// Prometheus reads times to the millisecond: rounded here, the last step
	// falls exactly on the window's end.
	end := q.end.Round(time.Millisecond)
	from := model.TimeFromUnixNano(q.end.Add(-window).UnixNano())
	gauge := q.sel("relaygate_inflight_requests")
	rng := fmt.Sprintf("%s[%s]", gauge, model.Duration(step))

	// The steps cover the window; only the first reaches before it, by less
	// than a step.
	steps := int64((window + step - 1) / step)
	counted, err := q.steps(ctx, "count(count_over_time("+rng+"))", promv1.Range{
		Start: end.Add(-time.Duration(steps-1) * step), End: end, Step: step})
	if err != nil {
		return time.Time{}, err
	}
	var first model.Time
	found := false
	// A first step with samples only from before the window is followed by
	// one inside it: two steps at most.
	for _, c := range counted[:min(len(counted), 2)] {
		samples, err := q.samples(ctx, rng, c.Timestamp.Time())
		if err != nil {
			return time.Time{}, err
		}
		for _, t := range samples {
			if t >= from && (!found || t < first) {
				first, found = t, true
			}
		}
		if found {
			break
		}
	}
	if !found {
		return time.Time{}, fmt.Errorf("%w: Prometheus has no relaygate_inflight_requests%s in the %s before %s; "+
			"check the Prometheus URL, that it scrapes the gateway (job relaygate) and the -match filter",
			ErrNoData, matchSuffix(q.match), q.window, q.end.UTC().Format(time.RFC3339))
	}
	if first > from {
		vec, err := q.vectorAt(ctx, fmt.Sprintf("min(timestamp(%s))", gauge), from.Time())
		if err != nil {
			return time.Time{}, err
		}
		if len(vec) > 0 && !math.IsNaN(float64(vec[0].Value)) {
			// timestamp() is in seconds, to the millisecond; at or before from.
			return model.Time(math.Round(float64(vec[0].Value) * 1000)).Time(), nil
		}
	}
	return first.Time(), nil
}

// steps runs a range query of one series (an aggregation without labels)
// and returns its points: the steps where it had a value.
func (q *querier) steps(ctx context.Context, promql string, r promv1.Range) ([]model.SamplePair, error) {
	v, warnings, _, err := q.api.QueryRange(ctx, promql, r)
	m, err := checked[model.Matrix](q, promql, v, warnings, err)
	if err != nil {
		return nil, err
	}
	if len(m) == 0 {
		return nil, nil
	}
	return m[0].Values, nil
}

// samples returns the timestamps of a range selector's raw samples at t,
// every series together.
func (q *querier) samples(ctx context.Context, selector string, t time.Time) ([]model.Time, error) {
	v, warnings, _, err := q.api.Query(ctx, selector, t)
	m, err := checked[model.Matrix](q, selector, v, warnings, err)
	if err != nil {
		return nil, err
	}
	var out []model.Time
	for _, ss := range m {
		for _, sp := range ss.Values {
			out = append(out, sp.Timestamp)
		}
	}
	return out, nil
}

func matchSuffix(m string) string {
	if m == "" {
		return ""
	}
	return "{" + m + "}"
}

// byLabels maps each sample's values of the given labels (joined by "\x00")
// to its value.
func byLabels(vec model.Vector, labels ...string) map[string]float64 {
	out := make(map[string]float64, len(vec))
	for _, s := range vec {
		parts := make([]string, len(labels))
		for i, l := range labels {
			parts[i] = string(s.Metric[model.LabelName(l)])
		}
		out[strings.Join(parts, "\x00")] += float64(s.Value)
	}
	return out
}

// histogram reads the quantiles of a histogram family, grouped by label
// ("" for the whole family), as label value → quantile → seconds.
func (q *querier) histogram(ctx context.Context, metric, label string) (map[string]map[float64]float64, error) {
	by := []string{"le"}
	if label != "" {
		by = append(by, label)
	}
	out := map[string]map[float64]float64{}
	for _, qt := range quantiles {
		promql := fmt.Sprintf("histogram_quantile(%s, %s)", strconv.FormatFloat(qt, 'g', -1, 64), q.increase(metric+"_bucket", by...))
		vec, err := q.vector(ctx, promql)
		if err != nil {
			return nil, err
		}
		for _, s := range vec {
			key := string(s.Metric[model.LabelName(label)])
			if out[key] == nil {
				out[key] = map[float64]float64{}
			}
			out[key][qt] = float64(s.Value)
		}
	}
	return out, nil
}

// read runs every query and fills the result.
func (r *ReportResult) read(ctx context.Context, q *querier, cfg *config.Config) error {
	// The first query to fail fails the report; none runs after it.
	var err error
	increase := func(metric string, by ...string) (v model.Vector) {
		if err == nil {
			v, err = q.vector(ctx, q.increase(metric, by...))
		}
		return v
	}
	histogram := func(metric, label string) (h map[string]map[float64]float64) {
		if err == nil {
			h, err = q.histogram(ctx, metric, label)
		}
		return h
	}
	attempts := increase("relaygate_upstream_requests_total", "upstream", "result")
	retries := increase("relaygate_retries_total", "upstream")
	answers := increase("relaygate_requests_total", "model", "upstream", "code")
	cost := increase("relaygate_cost_usd_total", "model", "upstream")
	tokens := increase("relaygate_tokens_total", "model", "kind")
	savings := increase("relaygate_savings_usd_total", "model")
	cacheSaved := increase("relaygate_cache_savings_usd_total", "model")
	noUsage := increase("relaygate_usage_unknown_total", "model")
	cache := increase("relaygate_cache_requests_total", "result")
	fallbacks := increase("relaygate_fallbacks_total", "from", "to")
	upLatency := histogram("relaygate_upstream_duration_seconds", "upstream")
	modelLatency := histogram("relaygate_request_duration_seconds", "model")
	allLatency := histogram("relaygate_request_duration_seconds", "")
	modelTTFT := histogram("relaygate_ttft_seconds", "model")
	allTTFT := histogram("relaygate_ttft_seconds", "")
	if err != nil {
		return err
	}

	monthly := float64(month) / float64(r.Covered)
	r.readUpstreams(attempts, retries, answers, cost, fallbacks, upLatency, monthly)
	r.readModels(answers, cost, tokens, savings, cacheSaved, noUsage, modelLatency, modelTTFT, cfg, monthly)
	r.Total = r.total(allLatency[""], allTTFT[""], monthly)
	r.readCache(cache, monthly)
	r.readFallbacks(fallbacks)
	return nil
}

func (r *ReportResult) readUpstreams(attempts, retries, answers, cost, fallbacks model.Vector,
	latency map[string]map[float64]float64, monthly float64) {
	byResult := byLabels(attempts, "upstream", "result")
	retried := byLabels(retries, "upstream")
	answered := byLabels(answers, "upstream")
	costs := byLabels(cost, "upstream")
	fellBack := byLabels(fallbacks, "from")

	names := map[string]bool{}
	for _, s := range attempts {
		names[string(s.Metric["upstream"])] = true
	}
	for name := range answered {
		if name != "cache" && name != "none" {
			names[name] = true
		}
	}
	for _, name := range slices.Sorted(maps.Keys(names)) {
		u := UpstreamReport{
			Name:      name,
			Success:   Figure(byResult[name+"\x00success"]),
			Errors:    Figure(byResult[name+"\x00error"]),
			Timeouts:  Figure(byResult[name+"\x00timeout"]),
			Retries:   Figure(retried[name]),
			Answers:   Figure(answered[name]),
			CostUSD:   Figure(costs[name]),
			FellBack:  Figure(fellBack[name]),
			Latency:   percentilesFrom(latency[name]),
			quantiles: latency[name],
		}
		u.Attempts = u.Success + u.Errors + u.Timeouts
		u.Availability = ratio(float64(u.Success), float64(u.Attempts))
		u.ErrorRate = ratio(float64(u.Errors), float64(u.Attempts))
		u.TimeoutRate = ratio(float64(u.Timeouts), float64(u.Attempts))
		u.MonthlyCostUSD = u.CostUSD * Figure(monthly)
		r.Upstreams = append(r.Upstreams, u)
	}
}

func (r *ReportResult) readModels(answers, cost, tokens, savings, cacheSavings, noUsage model.Vector,
	latency, ttft map[string]map[float64]float64, cfg *config.Config, monthly float64) {
	type counts struct{ all, serverErrors, clientGone, cacheHits float64 }
	perModel := map[string]*counts{}
	for _, s := range answers {
		name := string(s.Metric["model"])
		c := perModel[name]
		if c == nil {
			c = &counts{}
			perModel[name] = c
		}
		v := float64(s.Value)
		c.all += v
		code, _ := strconv.Atoi(string(s.Metric["code"]))
		switch {
		case code >= 500:
			c.serverErrors += v
		case code == 499:
			c.clientGone += v
		}
		if s.Metric["upstream"] == "cache" {
			c.cacheHits += v
		}
	}
	costs := byLabels(cost, "model")
	tok := byLabels(tokens, "model", "kind")
	saved := byLabels(savings, "model")
	cacheSaved := byLabels(cacheSavings, "model")
	unknown := byLabels(noUsage, "model")

	names := map[string]bool{}
	for name := range perModel {
		names[name] = true
	}
	for name := range costs {
		names[name] = true
	}
	for _, name := range slices.Sorted(maps.Keys(names)) {
		c := perModel[name]
		if c == nil {
			c = &counts{}
		}
		m := ModelReport{
			Name:             name,
			Requests:         Figure(c.all),
			ServerErrors:     Figure(c.serverErrors),
			ClientClosed:     Figure(c.clientGone),
			CacheHits:        Figure(c.cacheHits),
			Latency:          percentilesFrom(latency[name]),
			TTFT:             percentilesFrom(ttft[name]),
			PromptTokens:     Figure(tok[name+"\x00prompt"]),
			CompletionTokens: Figure(tok[name+"\x00completion"]),
			NoUsage:          Figure(unknown[name]),
			CostUSD:          Figure(costs[name]),
			SavingsUSD:       Figure(saved[name]),
			ReferencePerMTok: Missing, RoutingSavingsUSD: Missing, CacheSavingsUSD: Missing,
			latency: latency[name], ttft: ttft[name],
		}
		p, cpl := float64(m.PromptTokens), float64(m.CompletionTokens)
		m.CostPerMTok = ratio(float64(m.CostUSD)*1e6, p+cpl)
		m.Availability = availability(m.Requests, m.ClientClosed, m.ServerErrors)
		cache, ok := cacheSaved[name]
		m.splitSavings(cfg, cache, ok)
		m.finish(monthly)
		r.Models = append(r.Models, m)
	}
}

// splitSavings parts the model's savings into what routing to a cheaper
// upstream saved and what the cache saved. Routing's part is the reference
// price of the tokens upstreams served minus what they cost: net, so
// negative where a route costs more than the reference. The gateway's
// savings counter cannot go down and leaves such answers out, so with the
// cache's own counter (cache, known) SavingsUSD becomes the net sum.
// Without it (a gateway older than that counter) the split comes from the
// savings counter, exact while no route costs more than the reference.
func (m *ModelReport) splitSavings(cfg *config.Config, cache float64, known bool) {
	if cfg == nil {
		return
	}
	var mc *config.Model
	for i := range cfg.Models {
		if cfg.Models[i].Name == m.Name {
			mc = &cfg.Models[i]
		}
	}
	if mc == nil {
		return
	}
	saved := float64(m.SavingsUSD)
	if mc.ReferencePrice == nil {
		// Without a reference, upstream answers save nothing and a cache hit
		// saves the first route entry's price: all savings are the cache's.
		m.RoutingSavingsUSD, m.CacheSavingsUSD = 0, Figure(saved)
		return
	}
	p, c := float64(m.PromptTokens), float64(m.CompletionTokens)
	ref := pricePtr(mc.ReferencePrice).cost(p, c)
	m.ReferencePerMTok = ratio(ref*1e6, p+c)
	if known {
		m.RoutingSavingsUSD = Figure(ref - float64(m.CostUSD))
		m.CacheSavingsUSD = Figure(cache)
		m.SavingsUSD = m.RoutingSavingsUSD + m.CacheSavingsUSD
		return
	}
	routing := math.Min(math.Max(ref-float64(m.CostUSD), 0), saved)
	m.RoutingSavingsUSD = Figure(routing)
	m.CacheSavingsUSD = Figure(saved - routing)
}

// total sums the models into one row; its percentiles come from the
// histograms summed over models, not from the models' percentiles.
func (r *ReportResult) total(latency, ttft map[float64]float64, monthly float64) ModelReport {
	t := ModelReport{Name: "all models", Latency: percentilesFrom(latency), TTFT: percentilesFrom(ttft),
		latency: latency, ttft: ttft}
	var refCost float64
	refKnown, splitKnown := true, true
	for _, m := range r.Models {
		t.Requests += m.Requests
		t.ServerErrors += m.ServerErrors
		t.ClientClosed += m.ClientClosed
		t.CacheHits += m.CacheHits
		t.PromptTokens += m.PromptTokens
		t.CompletionTokens += m.CompletionTokens
		t.NoUsage += m.NoUsage
		t.CostUSD += m.CostUSD
		t.SavingsUSD += m.SavingsUSD
		if m.CacheSavingsUSD.Valid() {
			t.RoutingSavingsUSD += m.RoutingSavingsUSD
			t.CacheSavingsUSD += m.CacheSavingsUSD
		} else if m.SavingsUSD != 0 {
			splitKnown = false
		}
		switch {
		case m.ReferencePerMTok.Valid():
			refCost += float64(m.ReferencePerMTok) * float64(m.PromptTokens+m.CompletionTokens) / 1e6
		case m.PromptTokens+m.CompletionTokens > 0:
			refKnown = false
		}
	}
	if !splitKnown {
		t.RoutingSavingsUSD, t.CacheSavingsUSD = Missing, Missing
	}
	t.Availability = availability(t.Requests, t.ClientClosed, t.ServerErrors)
	tokens := float64(t.PromptTokens + t.CompletionTokens)
	t.CostPerMTok = ratio(float64(t.CostUSD)*1e6, tokens)
	t.ReferencePerMTok = Missing
	if refKnown {
		t.ReferencePerMTok = ratio(refCost*1e6, tokens)
	}
	t.finish(monthly)
	return t
}

// availability is the share of requests answered without a server error;
// requests whose client went away (499) are not counted either way.
func availability(all, clientClosed, serverErrors Figure) Figure {
	return ratio(float64(all-clientClosed-serverErrors), float64(all-clientClosed))
}

// finish derives the reference, savings share and monthly run-rates.
func (m *ModelReport) finish(monthly float64) {
	m.ReferenceUSD = m.CostUSD + m.SavingsUSD
	m.SavingsShare = ratio(float64(m.SavingsUSD), float64(m.ReferenceUSD))
	m.MonthlyCostUSD = m.CostUSD * Figure(monthly)
	m.MonthlySavingsUSD = m.SavingsUSD * Figure(monthly)
}

func (r *ReportResult) readCache(cache model.Vector, monthly float64) {
	res := byLabels(cache, "result")
	c := CacheReport{
		Hits: Figure(res["hit"]), Misses: Figure(res["miss"]),
		Errors: Figure(res["error"]), Bypassed: Figure(res["bypass"]),
		SavedUSD: r.Total.CacheSavingsUSD,
	}
	c.HitRatio = ratio(float64(c.Hits), float64(c.Hits+c.Misses+c.Errors))
	c.MonthlySavedUSD = c.SavedUSD * Figure(monthly)
	r.Cache = c
}

func (r *ReportResult) readFallbacks(fallbacks model.Vector) {
	for _, s := range fallbacks {
		f := FallbackReport{From: string(s.Metric["from"]), To: string(s.Metric["to"]), Count: Figure(s.Value)}
		f.Share = ratio(float64(f.Count), float64(r.Total.Requests))
		r.Fallbacks = append(r.Fallbacks, f)
	}
	slices.SortFunc(r.Fallbacks, func(a, b FallbackReport) int {
		if c := strings.Compare(a.From, b.From); c != 0 {
			return c
		}
		return strings.Compare(a.To, b.To)
	})
}

func percentilesFrom(q map[float64]float64) Percentiles {
	get := func(k float64) Figure {
		if v, ok := q[k]; ok {
			return Figure(v)
		}
		return Missing
	}
	return Percentiles{P50: get(0.5), P95: get(0.95), P99: get(0.99)}
}
