package migration

import (
	"cmp"
	"slices"
	"time"

	"github.com/relaygate/relaygate/service/config"
)

// CompareResult is what Compare measured; it is also the JSON output.
type CompareResult struct {
	Model          string           `json:"model"`
	Started        time.Time        `json:"started"`
	Finished       time.Time        `json:"finished"`
	Requests       int              `json:"requests_per_upstream"`
	Concurrency    int              `json:"concurrency_per_upstream"`
	Stream         StreamMode       `json:"stream"`
	PromptSource   string           `json:"prompt_set"`
	Prompts        int              `json:"prompts"`
	MonthlyTokens  float64          `json:"monthly_tokens"`
	ReferencePrice *Price           `json:"reference_price,omitempty"`
	Interrupted    bool             `json:"interrupted,omitempty"`
	Upstreams      []UpstreamResult `json:"upstreams"`
}

// Price is in US dollars per million tokens.
type Price struct {
	InputPerMTok  float64 `json:"input_per_mtok_usd"`
	OutputPerMTok float64 `json:"output_per_mtok_usd"`
}

func pricePtr(p *config.Price) *Price {
	if p == nil {
		return nil
	}
	return &Price{InputPerMTok: p.InputPerMTok, OutputPerMTok: p.OutputPerMTok}
}

// cost of the tokens in dollars.
func (p Price) cost(prompt, completion float64) float64 {
	return (prompt*p.InputPerMTok + completion*p.OutputPerMTok) / 1e6
}

// UpstreamResult is one upstream's row.
type UpstreamResult struct {
	Name    string `json:"name"`
	Model   string `json:"model"`
	BaseURL string `json:"base_url"`
	// Skipped says why no request was sent, e.g. the key's variable is unset.
	Skipped string `json:"skipped,omitempty"`

	// Sent counts completed requests; OK, Errors and Timeouts split them.
	Sent     int `json:"sent"`
	OK       int `json:"ok"`
	Errors   int `json:"errors"`
	Timeouts int `json:"timeouts"`
	// Availability is OK/Sent; ErrorRate and TimeoutRate the rest.
	Availability Figure    `json:"availability"`
	ErrorRate    Figure    `json:"error_rate"`
	TimeoutRate  Figure    `json:"timeout_rate"`
	Failures     []Failure `json:"failures,omitempty"`

	// Latency is to the whole answer, over successful requests, streamed or
	// not, with each kind apart as well; TTFT is to the first token, over
	// successful streamed ones.
	Latency            Percentiles `json:"latency"`
	LatencyStreamed    Percentiles `json:"latency_streamed"`
	LatencyNotStreamed Percentiles `json:"latency_not_streamed"`
	TTFT               Percentiles `json:"ttft"`
	StreamedOK         int         `json:"streamed_ok"`
	// TokensPerSecond is the median over successful answers of completion
	// tokens divided by the request's whole time.
	TokensPerSecond Figure `json:"completion_tokens_per_second"`

	// Tokens as the upstream reported them in usage; NoUsage counts
	// successful answers that reported none (left out of cost).
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	NoUsage          int   `json:"answers_without_usage"`

	// Price is the route entry's price for this upstream, else the model's.
	Price Price `json:"price"`
	// CostUSD is what this run cost; CostPerMTok the blended price of its
	// tokens at the prompt set's input/output mix, ReferencePerMTok the same
	// tokens at the model's reference price.
	CostUSD          Figure `json:"cost_usd"`
	CostPerMTok      Figure `json:"cost_per_mtok_usd"`
	ReferencePerMTok Figure `json:"reference_per_mtok_usd"`
	// Monthly figures are at CompareResult.MonthlyTokens; savings are the
	// reference's monthly cost minus this upstream's, SavingsShare that as a
	// share of the reference.
	MonthlyCostUSD      Figure `json:"monthly_cost_usd"`
	MonthlyReferenceUSD Figure `json:"monthly_reference_usd"`
	MonthlySavingsUSD   Figure `json:"monthly_savings_usd"`
	SavingsShare        Figure `json:"savings_share"`

	// Samples for the chart; not part of the JSON.
	latencies, ttfts []time.Duration
}

// Failure is a cause of failed requests and how many it caused.
type Failure struct {
	Reason string `json:"reason"`
	Count  int    `json:"count"`
}

// tally accumulates one upstream's outcomes.
type tally struct {
	sent, ok, errors, timeouts, streamedOK, noUsage int
	latencies, ttfts, streamed, notStreamed         []time.Duration
	tokensPerSecond                                 []float64
	prompt, completion                              int64
	failures                                        map[string]int
}

func (t *tally) add(o outcome) {
	t.sent++
	switch {
	case o.timeout:
		t.timeouts++
		t.failures[o.reason]++
		return
	case o.err != nil:
		t.errors++
		t.failures[o.reason]++
		return
	}
	t.ok++
	t.latencies = append(t.latencies, o.latency)
	if o.streamed {
		t.streamedOK++
		t.ttfts = append(t.ttfts, o.ttft)
		t.streamed = append(t.streamed, o.latency)
	} else {
		t.notStreamed = append(t.notStreamed, o.latency)
	}
	if o.usage == nil {
		t.noUsage++
		return
	}
	t.prompt += int64(o.usage.PromptTokens)
	t.completion += int64(o.usage.CompletionTokens)
	if s := o.latency.Seconds(); s > 0 {
		t.tokensPerSecond = append(t.tokensPerSecond, float64(o.usage.CompletionTokens)/s)
	}
}

func (t *tally) result(tg *target, reference *config.Price, monthlyTokens float64) UpstreamResult {
	price := Price{InputPerMTok: tg.price.InputPerMTok, OutputPerMTok: tg.price.OutputPerMTok}
	r := UpstreamResult{
		Name: tg.name, Model: tg.model, BaseURL: tg.baseURL,
		Sent: t.sent, OK: t.ok, Errors: t.errors, Timeouts: t.timeouts,
		Availability:       ratio(float64(t.ok), float64(t.sent)),
		ErrorRate:          ratio(float64(t.errors), float64(t.sent)),
		TimeoutRate:        ratio(float64(t.timeouts), float64(t.sent)),
		Latency:            percentilesOf(t.latencies),
		LatencyStreamed:    percentilesOf(t.streamed),
		LatencyNotStreamed: percentilesOf(t.notStreamed),
		TTFT:               percentilesOf(t.ttfts),
		StreamedOK:         t.streamedOK,

		TokensPerSecond:  median(t.tokensPerSecond),
		PromptTokens:     t.prompt,
		CompletionTokens: t.completion,
		NoUsage:          t.noUsage,
		Price:            price,
		CostUSD:          Missing, CostPerMTok: Missing, ReferencePerMTok: Missing,
		MonthlyCostUSD: Missing, MonthlyReferenceUSD: Missing, MonthlySavingsUSD: Missing, SavingsShare: Missing,
		latencies: t.latencies, ttfts: t.ttfts,
	}
	if tg.disabled != "" {
		r.Skipped = "not run: " + tg.disabled
	}
	for reason, n := range t.failures {
		r.Failures = append(r.Failures, Failure{Reason: reason, Count: n})
	}
	slices.SortFunc(r.Failures, func(a, b Failure) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Reason, b.Reason))
	})

	p, c := float64(t.prompt), float64(t.completion)
	if p+c == 0 {
		return r
	}
	cost := price.cost(p, c)
	r.CostUSD = Figure(cost)
	r.CostPerMTok = ratio(cost*1e6, p+c)
	if reference != nil {
		r.ReferencePerMTok = ratio(pricePtr(reference).cost(p, c)*1e6, p+c)
	}
	if monthlyTokens > 0 {
		r.MonthlyCostUSD = Figure(float64(r.CostPerMTok) * monthlyTokens / 1e6)
		if r.ReferencePerMTok.Valid() {
			r.MonthlyReferenceUSD = Figure(float64(r.ReferencePerMTok) * monthlyTokens / 1e6)
			r.MonthlySavingsUSD = r.MonthlyReferenceUSD - r.MonthlyCostUSD
			r.SavingsShare = ratio(float64(r.MonthlySavingsUSD), float64(r.MonthlyReferenceUSD))
		}
	}
	return r
}
