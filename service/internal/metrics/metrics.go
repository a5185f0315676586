// Package metrics defines the gateway's Prometheus metrics, with SPEC.md's
// names. Labels come only from configuration (model and upstream names) or
// from small fixed sets (status codes, token kinds, cache results, the API
// of the endpoint: chat, embeddings, responses, messages …), never
// from what a client sends, so cardinality stays bounded. Hot-path series
// are resolved once and cached, so recording a request costs no label
// hashing after the first time.
package metrics

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Buckets span a 20 µs gateway overhead to a five-minute completion, so one
// set resolves both ends (SPEC: a 40 µs overhead and a 60 s completion).
var Buckets = []float64{
	0.00001, 0.00002, 0.00004, 0.00008, 0.00016, 0.00032, 0.00064,
	0.00125, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75,
	1, 1.5, 2, 2.5, 5, 10, 20, 30, 60, 120, 300,
}

// Label values used when there is nothing better to say.
const (
	// UnknownModel buckets every model name that is not in the config.
	UnknownModel = "unknown"
	// NoUpstream labels requests answered before any upstream was chosen.
	NoUpstream = "none"
	// CacheUpstream labels requests answered from the cache.
	CacheUpstream = "cache"
)

// Metrics holds every collector the gateway exports.
type Metrics struct {
	Registry *prometheus.Registry

	requests         *prometheus.CounterVec
	duration         *prometheus.HistogramVec
	upstreamDuration *prometheus.HistogramVec
	overhead         prometheus.Histogram
	ttft             *prometheus.HistogramVec
	tokens           *prometheus.CounterVec
	usageUnknown     *prometheus.CounterVec
	cost             *prometheus.CounterVec
	savings          *prometheus.CounterVec
	cacheSavings     *prometheus.CounterVec
	cacheRequests    *prometheus.CounterVec
	retries          *prometheus.CounterVec
	fallbacks        *prometheus.CounterVec
	upstreamUp       *prometheus.GaugeVec
	upstreamAttempts *prometheus.CounterVec
	inflight         prometheus.Gauge
	rateLimited      *prometheus.CounterVec
	rateLimitErrors  prometheus.Counter
	budget           prometheus.Gauge
	breakerChanges   *prometheus.CounterVec
	connections      *prometheus.GaugeVec
	connRefused      *prometheus.CounterVec
	usageSuspicious  *prometheus.CounterVec
	responseBuffer   prometheus.Gauge
	responseIDsLocal *prometheus.CounterVec
	pools            poolSeries  // pools.go
	keys             *keyMetrics // by named key and team (keys.go)

	cacheSeries    map[string]prometheus.Counter // fixed results, read-only after New
	upstreamSeries sync.Map                      // attemptKey → prometheus.Counter, upstream → prometheus.Observer
	requestSeries  sync.Map                      // requestKey → prometheus.Counter
	modelSeries    sync.Map                      // model → *modelSeries
	apiSeries      sync.Map                      // apiKey → *apiSeries
}

type requestKey struct {
	model, api, upstream string
	code                 int
}

type apiKey struct{ model, api string }

// apiSeries are a model's series that also carry the API.
type apiSeries struct {
	duration, ttft                 prometheus.Observer
	promptTokens, completionTokens prometheus.Counter
}

type attemptKey struct{ upstream, result string }

type modelSeries struct {
	savings, cacheSavings prometheus.Counter
	usageUnknown          prometheus.Counter
	usageSuspicious       prometheus.Counter
}

// New registers every metric on a fresh registry, with the Go runtime and
// process collectors beside them.
func New() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{Registry: r}
	f := func(c prometheus.Collector) { r.MustRegister(c) }

	m.requests = counterVec("relaygate_requests_total",
		"Client requests answered, by model, API (chat, embeddings, …), the upstream that answered (none, cache) and HTTP status.",
		"model", "api", "upstream", "code")
	m.duration = histogramVec("relaygate_request_duration_seconds",
		"Time from a request's arrival to the last byte of its answer.",
		"model", "api")
	m.upstreamDuration = histogramVec("relaygate_upstream_duration_seconds",
		"Time spent waiting on an upstream for one attempt, body included.",
		"upstream")
	m.overhead = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "relaygate_overhead_seconds",
		Help:    "Time the gateway itself spent on a request: total minus time waiting on upstreams.",
		Buckets: Buckets,
	})
	m.ttft = histogramVec("relaygate_ttft_seconds",
		"Time from a streamed request's arrival to its first event reaching the client.",
		"model", "api")
	m.tokens = counterVec("relaygate_tokens_total",
		"Tokens reported by upstreams' usage, by API and kind (prompt, completion).",
		"model", "api", "kind")
	m.usageUnknown = counterVec("relaygate_usage_unknown_total",
		"Answers whose upstream reported no usage (whole, or cut short after they began); their tokens and cost are not counted.",
		"model")
	m.cost = counterVec("relaygate_cost_usd_total",
		"What the answered requests cost at the configured price of the upstream that answered.",
		"model", "api", "upstream")
	m.savings = counterVec("relaygate_savings_usd_total",
		"Reference (official) price of the answered requests minus what they cost; cache hits save it all.",
		"model")
	// The savings counter cannot go below zero, so an answer dearer than
	// the reference adds nothing to it. Counting the cache's part apart
	// lets a report take routing's part from tokens and prices instead,
	// negative where it is, and still know what the cache saved.
	m.cacheSavings = counterVec("relaygate_cache_savings_usd_total",
		"What cache hits saved: the price of the answers they replayed (also in relaygate_savings_usd_total).",
		"model")
	m.cacheRequests = counterVec("relaygate_cache_requests_total",
		"Cache look-ups by result: hit, miss, error (Redis down or slow), bypass (not cacheable).",
		"result")
	m.retries = counterVec("relaygate_retries_total",
		"Retries of an upstream after a retryable failure.",
		"upstream")
	m.fallbacks = counterVec("relaygate_fallbacks_total",
		"Requests passed from one upstream of a route to the next.",
		"from", "to")
	m.upstreamUp = gaugeVec("relaygate_upstream_up",
		"1 while an upstream takes traffic, 0 while its circuit is open or it is disabled.",
		"upstream")
	m.upstreamAttempts = counterVec("relaygate_upstream_requests_total",
		"Attempts sent to each upstream, by result: success (it answered, 4xx included), error, timeout. Retries and fallbacks count here, not in relaygate_requests_total.",
		"upstream", "result")
	m.inflight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "relaygate_inflight_requests",
		Help: "Requests being served now, streams included.",
	})
	m.rateLimited = counterVec("relaygate_rate_limited_total",
		"Requests refused by the per-key rate limits, by limit (rpm, tpm).",
		"limit")
	m.rateLimitErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "relaygate_rate_limit_errors_total",
		Help: "Rate-limit checks that could not reach Redis (the request was let through).",
	})
	m.budget = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "relaygate_latency_budget_seconds",
		Help: "The p95 latency objective from the config (slo.latency_p95), for alerting.",
	})
	m.breakerChanges = counterVec("relaygate_circuit_transitions_total",
		"Circuit breaker state changes per upstream, by the state entered.",
		"upstream", "state")

	m.usageSuspicious = counterVec("relaygate_usage_suspicious_total",
		"Answers whose upstream reported more tokens than the request could produce (over its max_tokens, or a prompt larger than the request could hold); their usage is not believed, so their tokens and cost are not counted (nor in relaygate_usage_unknown_total).",
		"model")
	m.responseBuffer = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "relaygate_response_buffer_bytes",
		Help: "Memory reserved now for whole upstream answers being read and sent, out of buffer_budget_bytes.",
	})
	for _, c := range []prometheus.Collector{
		m.usageSuspicious, m.responseBuffer,
		m.requests, m.duration, m.upstreamDuration, m.overhead, m.ttft, m.tokens,
		m.usageUnknown, m.cost, m.savings, m.cacheSavings, m.cacheRequests, m.retries, m.fallbacks,
		m.upstreamUp, m.upstreamAttempts, m.inflight, m.rateLimited, m.rateLimitErrors, m.breakerChanges,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		f(c)
	}
	m.connections = gaugeVec("relaygate_connections",
		"Client connections open now, by listener (api, admin).",
		"listener")
	m.connRefused = counterVec("relaygate_connections_refused_total",
		"Client connections closed by a limit, by listener and reason: over max_connections with every connection serving a request, over max_connections_per_ip, or evicted_waiting (a connection with no request in flight closed to make room at max_connections).",
		"listener", "reason")
	f(m.connections)
	f(m.connRefused)
	m.responseIDsLocal = counterVec("relaygate_response_ids_local_total",
		"Responses API id look-ups and records (op: put, get, delete) that Redis could not serve and this process's own bounded map did; ids recorded so are unknown to other replicas.",
		"op")
	f(m.responseIDsLocal)
	m.pools = newPoolSeries(f)
	m.keys = newKeyMetrics(f)
	m.cacheSeries = map[string]prometheus.Counter{}
	for _, res := range []string{"hit", "miss", "error", "bypass"} {
		m.cacheSeries[res] = m.cacheRequests.WithLabelValues(res)
	}
	return m
}

// SetLatencyBudget exports the configured p95 objective; zero removes it so
// the latency alert does not fire against a budget nobody set.
func (m *Metrics) SetLatencyBudget(seconds float64) {
	if seconds <= 0 {
		m.Registry.Unregister(m.budget)
		return
	}
	m.Registry.Unregister(m.budget)
	m.Registry.MustRegister(m.budget)
	m.budget.Set(seconds)
}

func (m *Metrics) model(name string) *modelSeries {
	if s, ok := m.modelSeries.Load(name); ok {
		return s.(*modelSeries)
	}
	s := &modelSeries{
		savings:         m.savings.WithLabelValues(name),
		cacheSavings:    m.cacheSavings.WithLabelValues(name),
		usageUnknown:    m.usageUnknown.WithLabelValues(name),
		usageSuspicious: m.usageSuspicious.WithLabelValues(name),
	}
	actual, _ := m.modelSeries.LoadOrStore(name, s)
	return actual.(*modelSeries)
}

func (m *Metrics) api(model, api string) *apiSeries {
	k := apiKey{model, api}
	if s, ok := m.apiSeries.Load(k); ok {
		return s.(*apiSeries)
	}
	s := &apiSeries{
		duration:         m.duration.WithLabelValues(model, api),
		ttft:             m.ttft.WithLabelValues(model, api),
		promptTokens:     m.tokens.WithLabelValues(model, api, "prompt"),
		completionTokens: m.tokens.WithLabelValues(model, api, "completion"),
	}
	actual, _ := m.apiSeries.LoadOrStore(k, s)
	return actual.(*apiSeries)
}

// Prepare creates a model's series for one API at zero for each upstream
// of its route for that API, so that Prometheus sees them before their
// first increment: increase() cannot count what happened before a series'
// first scrape. The failures are prepared too: the first 502 of an outage,
// the first 429 of a quota, or the first fallback, would otherwise start
// its series, and reports and alerts (increase, rate) would never count it.
// It also resolves the series a request records, once.
func (m *Metrics) Prepare(model, api string, upstreams []string) {
	m.model(model)
	m.api(model, api)
	for _, code := range []int{429, 499, 502, 503, 504} {
		m.requestCounter(model, api, NoUpstream, code)
	}
	var ups []string // the real upstreams, the cache left out
	for _, u := range upstreams {
		m.requestCounter(model, api, u, 200)
		m.cost.WithLabelValues(model, api, u)
		if u == CacheUpstream {
			continue
		}
		m.requestCounter(model, api, u, 499)
		for _, res := range []string{"success", "error", "timeout"} {
			m.attemptCounter(u, res)
		}
		ups = append(ups, u)
	}
	// A fallback goes from an upstream to any later one (those between
	// may be disabled or skipped).
	for i, from := range ups {
		for _, to := range ups[i+1:] {
			m.fallbacks.WithLabelValues(from, to)
		}
	}
}

func (m *Metrics) requestCounter(model, api, upstream string, code int) prometheus.Counter {
	k := requestKey{model, api, upstream, code}
	c, ok := m.requestSeries.Load(k)
	if !ok {
		c, _ = m.requestSeries.LoadOrStore(k, m.requests.WithLabelValues(model, api, upstream, strconv.Itoa(code)))
	}
	return c.(prometheus.Counter)
}

func (m *Metrics) attemptCounter(upstream, result string) prometheus.Counter {
	k := attemptKey{upstream, result}
	c, ok := m.upstreamSeries.Load(k)
	if !ok {
		c, _ = m.upstreamSeries.LoadOrStore(k, m.upstreamAttempts.WithLabelValues(upstream, result))
	}
	return c.(prometheus.Counter)
}

// Request counts one answered request to api and its total duration.
func (m *Metrics) Request(model, api, upstream string, code int, seconds float64) {
	m.requestCounter(model, api, upstream, code).Inc()
	m.api(model, api).duration.Observe(seconds)
}

// UpstreamDuration records one attempt's wait on an upstream.
func (m *Metrics) UpstreamDuration(upstream string, seconds float64) {
	o, ok := m.upstreamSeries.Load(upstream)
	if !ok {
		o, _ = m.upstreamSeries.LoadOrStore(upstream, m.upstreamDuration.WithLabelValues(upstream))
	}
	o.(prometheus.Observer).Observe(seconds)
}

// Overhead records the gateway's own time on one request.
func (m *Metrics) Overhead(seconds float64) { m.overhead.Observe(seconds) }

// TTFT records the time to a stream's first event.
func (m *Metrics) TTFT(model, api string, seconds float64) { m.api(model, api).ttft.Observe(seconds) }

// Usage counts tokens, cost and savings of one answer. cost and reference
// are in dollars; a negative saving (the route costs more than the
// reference) is not counted, since a counter cannot go down: the cost
// counter shows it.
func (m *Metrics) Usage(model, api, upstream string, prompt, completion int, cost, reference float64, hasReference bool) {
	s := m.model(model)
	a := m.api(model, api)
	a.promptTokens.Add(float64(prompt))
	a.completionTokens.Add(float64(completion))
	if upstream != CacheUpstream {
		m.cost.WithLabelValues(model, api, upstream).Add(cost)
	}
	if hasReference && reference > cost {
		s.savings.Add(reference - cost)
	}
}

// UsageUnknown counts an answer that came without usage.
func (m *Metrics) UsageUnknown(model string) { m.model(model).usageUnknown.Inc() }

// UsageSuspicious counts an answer whose usage was beyond what its request
// could produce, and so was not counted.
func (m *Metrics) UsageSuspicious(model string) { m.model(model).usageSuspicious.Inc() }

// ResponseBuffer moves the memory reserved for whole answers by delta bytes.
func (m *Metrics) ResponseBuffer(delta float64) { m.responseBuffer.Add(delta) }

// Cache counts one cache look-up by result.
func (m *Metrics) Cache(result string) {
	if c, ok := m.cacheSeries[result]; ok {
		c.Inc()
		return
	}
	m.cacheRequests.WithLabelValues(result).Inc()
}

// Retry counts a retry of an upstream.
func (m *Metrics) Retry(upstream string) { m.retries.WithLabelValues(upstream).Inc() }

// Fallback counts a move from one upstream to the next.
func (m *Metrics) Fallback(from, to string) { m.fallbacks.WithLabelValues(from, to).Inc() }

// UpstreamAttempt counts one attempt at an upstream by its result.
func (m *Metrics) UpstreamAttempt(upstream, result string) {
	m.attemptCounter(upstream, result).Inc()
}

// UpstreamUp sets whether an upstream takes traffic.
func (m *Metrics) UpstreamUp(upstream string, up bool) {
	for _, r := range []string{"success", "error", "timeout"} {
		m.upstreamAttempts.WithLabelValues(upstream, r)
	}
	v := 0.0
	if up {
		v = 1
	}
	m.upstreamUp.WithLabelValues(upstream).Set(v)
}

// UpstreamDisabled removes a disabled upstream's up series: it is off by
// configuration, which is not an outage to alert on (/health says why).
func (m *Metrics) UpstreamDisabled(upstream string) {
	m.upstreamUp.DeleteLabelValues(upstream)
}

// UpstreamRemoved removes the up series of an upstream that a reload took
// out of the config: left behind, its last value would go on firing (or
// silencing) alerts about an upstream that no longer exists.
func (m *Metrics) UpstreamRemoved(upstream string) {
	m.upstreamUp.DeleteLabelValues(upstream)
}

// CircuitTransition counts a breaker entering state.
func (m *Metrics) CircuitTransition(upstream, state string) {
	m.breakerChanges.WithLabelValues(upstream, state).Inc()
}

// Inflight moves the in-flight gauge by delta.
func (m *Metrics) Inflight(delta float64) { m.inflight.Add(delta) }

// RateLimited counts a refusal by the named limit.
func (m *Metrics) RateLimited(limit string) { m.rateLimited.WithLabelValues(limit).Inc() }

// RateLimitError counts a limit check that could not reach Redis.
func (m *Metrics) RateLimitError() { m.rateLimitErrors.Inc() }

// CacheSaving counts what a cache hit saved: the whole price of the answer.
func (m *Metrics) CacheSaving(model string, dollars float64) {
	if dollars > 0 {
		s := m.model(model)
		s.savings.Add(dollars)
		s.cacheSavings.Add(dollars)
	}
}

// ResponseIDLocal counts a response-id operation Redis could not serve.
func (m *Metrics) ResponseIDLocal(op string) { m.responseIDsLocal.WithLabelValues(op).Inc() }

// Connections is the open-connections gauge of one listener, resolved once:
// it moves on every accept and close.
func (m *Metrics) Connections(listener string) prometheus.Gauge {
	return m.connections.WithLabelValues(listener)
}

// ConnectionRefused counts a connection closed as it arrived, over a limit.
func (m *Metrics) ConnectionRefused(listener, reason string) {
	m.connRefused.WithLabelValues(listener, reason).Inc()
}

// counterVec, gaugeVec and histogramVec build a vector from its name, help
// and label names; histograms take Buckets.
func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
}

func gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
}

func histogramVec(name, help string, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: Buckets}, labels)
}
