// Package smoketest verifies a deployed Relaygate stack from its outputs:
// the gateway's health and readiness, its GPUs, a completion and a stream
// through the OpenAI client teams use, the cache, the metrics, Prometheus's
// targets and alert rules, and latency percentiles against the stack's
// budget. It is what `make smoke` and the deploy gate run: every check ends
// in a pass or a failure that says what to do, never a panic, so a bad
// deploy is caught and explained before users meet it.
package smoketest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/relaygate/relaygate/internal/ctxsleep"
	"github.com/relaygate/relaygate/internal/defaults"
)

// Defaults for zero Options fields.
const (
	DefaultRequests    = 30
	DefaultConcurrency = 4
	// DefaultStepTimeout bounds one check. A completion through a real
	// relay takes seconds; a minute leaves room for a cold upstream
	// without letting a dead host hang a deploy.
	DefaultStepTimeout = 60 * time.Second
	// DefaultLatencyTimeout bounds the whole latency check.
	DefaultLatencyTimeout = 5 * time.Minute
	// DefaultPrometheusWait is how long to wait for Prometheus to have
	// scraped the gateway: a few of its 15 s scrape intervals.
	DefaultPrometheusWait = 90 * time.Second
	// DefaultDeployWaitReady is how long the smoke test after a deploy or
	// rollback waits for /ready (Options.WaitReady): behind prod's load
	// balancer a replaced container takes traffic only after two passing
	// 10 s health checks, and until then /ready may answer 502 or 503.
	DefaultDeployWaitReady = 2 * time.Minute
)

// readyPoll is how often the wait for /ready asks, and readyStreak how many
// 200s in a row end it: behind a load balancer one answer may come from a
// target on its way out.
var readyPoll = 2 * time.Second

const readyStreak = 3

// Options configures Run.
type Options struct {
	Outputs Outputs
	// Stack names the stack in the report; it is not used otherwise.
	Stack string
	// Model is the model to ask; empty picks the first chat model the
	// gateway lists.
	Model string
	// Requests and Concurrency shape the latency check.
	Requests, Concurrency int
	// StepTimeout bounds each check except latency; LatencyTimeout bounds
	// latency; PrometheusWait bounds the wait for Prometheus to scrape.
	StepTimeout, LatencyTimeout, PrometheusWait time.Duration
	// Rules are the alert and recording rule names Prometheus must have
	// loaded; empty means every rule in this repository's
	// deploy/prometheus/rules.
	Rules []string
	// WaitReady, when positive, is how long to wait before the checks for
	// GET /ready to answer 200 (a few times in a row), for a stack whose
	// containers were just replaced. It decides nothing: when the time
	// passes, the checks run anyway and the ready check reports it.
	WaitReady time.Duration
	// ModelServerWait bounds the wait for the self-hosted model to answer;
	// UtilizationWindow is how long the model is kept busy while the
	// GPU's utilization is watched.
	ModelServerWait, UtilizationWindow time.Duration
	// LedgerWait bounds the wait for the completion's row in the ledger.
	LedgerWait time.Duration
	// Progress receives a line as each check starts and ends; nil is quiet.
	Progress io.Writer
}

func (o *Options) defaults() {
	defaults.Positive(&o.Requests, DefaultRequests)
	defaults.Positive(&o.Concurrency, DefaultConcurrency)
	if o.Concurrency > o.Requests {
		o.Concurrency = o.Requests
	}
	defaults.Positive(&o.StepTimeout, DefaultStepTimeout)
	defaults.Positive(&o.LatencyTimeout, DefaultLatencyTimeout)
	defaults.Positive(&o.PrometheusWait, DefaultPrometheusWait)
	defaults.Positive(&o.ModelServerWait, DefaultModelServerWait)
	defaults.Positive(&o.UtilizationWindow, DefaultUtilizationWindow)
	defaults.Positive(&o.LedgerWait, DefaultLedgerWait)
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// runner holds what one run learns as it goes: later checks depend on
// earlier ones (the model to ask, whether the key works, the metrics
// before any request was made).
type runner struct {
	opts   Options
	runID  string
	http   *http.Client
	openai *openai.Client
	report *Report

	health       *healthDoc
	authOK       bool
	model        string
	baseline     metricFamilies
	baselineErr  error
	okRequests   int // answered 200 by the gateway during this run
	okStreams    int // of which streams
	cacheHitSeen bool
	streamSeen   bool
	// ledgerProbe is the completion check's request, once answered.
	ledgerProbe *ledgerProbe
}

// Run runs every check against the stack and returns the report. It fails
// only through the report: an unreachable host, a wrong key or a timeout is
// a failed check with a hint.
func Run(ctx context.Context, opts Options) *Report {
	start := time.Now()
	r := &runner{opts: opts, report: &Report{
		Stack: opts.Stack, GatewayURL: opts.Outputs.GatewayURL, PrometheusURL: opts.Outputs.PrometheusURL,
		ImageRef: opts.Outputs.ImageRef, Started: start.UTC(),
	}}
	defer func() {
		r.report.DurationMS = ms(time.Since(start))
		r.report.Passed = len(r.report.Failed()) == 0
		r.report.redact(opts.Outputs.GatewayAPIKey)
	}()
	r.opts.defaults()
	r.runID = newRunID()
	r.connect(r.opts.Concurrency)
	defer r.http.CloseIdleConnections()

	if r.opts.WaitReady > 0 {
		r.waitReady(ctx)
	}
	// The counters before this run's requests, so the metrics check can
	// tell that they moved.
	{
		ctx, cancel := context.WithTimeout(ctx, r.opts.StepTimeout)
		r.baseline, r.baselineErr = r.scrapeMetrics(ctx)
		cancel()
	}

	r.step(ctx, CheckHealth, "GET /health", nil, r.checkHealth)
	r.step(ctx, CheckReady, "GET /ready", nil, r.checkReady)
	r.step(ctx, CheckAuth, "the stack's key lists the models", nil, r.checkAuth)
	r.step(ctx, CheckGPU, "GPUs the gateway sees against expectedGpuCount", nil, r.checkGPU)
	needKey := func() string {
		if !r.authOK {
			return "needs a key the gateway accepts and a model (see " + CheckAuth + ")"
		}
		return ""
	}
	const modelServerTitle = "the self-hosted model answers from the model server on the GPU"
	if r.opts.Outputs.SelfHostedModel == "" {
		r.notApplicable(CheckModelServer, modelServerTitle, "the stack runs no model server (its selfHostedModel output is empty)")
	} else {
		r.stepTimeout(ctx, CheckModelServer, modelServerTitle, needKey,
			r.opts.ModelServerWait+r.opts.UtilizationWindow+2*r.opts.StepTimeout, r.checkModelServer)
	}
	r.step(ctx, CheckCompletion, "a chat completion through go-openai", needKey, r.checkCompletion)
	r.step(ctx, CheckStream, "a streamed completion through go-openai", needKey, r.checkStream)
	r.step(ctx, CheckCache, "a repeated deterministic request comes from the cache", needKey, r.checkCache)
	r.stepTimeout(ctx, CheckLatency, "latency percentiles against latencyBudgetP95Ms", needKey, r.opts.LatencyTimeout, r.checkLatency)
	r.step(ctx, CheckMetrics, "relaygate_ metrics exported and moving", needKey, r.checkMetrics)
	needCompletion := func() string {
		if why := needKey(); why != "" {
			return why
		}
		if r.ledgerProbe == nil {
			return "needs an answered completion to look up (see " + CheckCompletion + ")"
		}
		return ""
	}
	r.stepTimeout(ctx, CheckLedger, "the completion's row is in the usage ledger", needCompletion, r.opts.LedgerWait+r.opts.StepTimeout, r.checkLedger)
	needProm := func() string {
		if r.opts.Outputs.PrometheusURL == "" {
			return "the stack has no prometheusUrl output"
		}
		return ""
	}
	r.stepTimeout(ctx, CheckPrometheusTarget, "Prometheus scrapes the gateway", needProm, r.opts.PrometheusWait+r.opts.StepTimeout, r.checkPrometheusTarget)
	r.step(ctx, CheckPrometheusRules, "Prometheus has the project's alert rules", needProm, r.checkPrometheusRules)
	r.report.Model = r.model
	return r.report
}

// waitReady polls GET /ready until it answers 200 readyStreak times in a
// row or opts.WaitReady passes, saying which on Progress.
func (r *runner) waitReady(ctx context.Context) {
	fmt.Fprintf(r.opts.Progress, "smoke: waiting up to %s for GET /ready to answer 200 …\n", r.opts.WaitReady)
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, r.opts.WaitReady)
	defer cancel()
	streak, last := 0, "no answer yet"
	for {
		pctx, pcancel := context.WithTimeout(ctx, min(r.opts.StepTimeout, 10*time.Second))
		code, _, err := r.get(pctx, "/ready", false)
		pcancel()
		switch {
		case err != nil && ctx.Err() != nil:
			// The wait's own limit cut this probe short: that says nothing
			// about the gateway, so the last real answer is kept.
			streak = 0
		case err != nil:
			streak, last = 0, err.Error()
		case code == http.StatusOK:
			streak++
		default:
			streak, last = 0, fmt.Sprintf("HTTP %d", code)
		}
		if streak >= readyStreak {
			fmt.Fprintf(r.opts.Progress, "smoke: GET /ready answers 200 (after %s)\n", time.Since(t0).Round(100*time.Millisecond))
			return
		}
		if !ctxsleep.Sleep(ctx, readyPoll) {
			fmt.Fprintf(r.opts.Progress, "smoke: GET /ready did not answer 200 within %s (last: %s); running the checks anyway\n",
				r.opts.WaitReady, oneLine(last))
			return
		}
	}
}

// notApplicable records a check of a part the stack does not have.
func (r *runner) notApplicable(name, title, why string) {
	s := Step{Name: name, Title: title, Status: NotApplicable, Detail: why}
	r.finish(&s, time.Now())
}

func (r *runner) step(ctx context.Context, name, title string, skipIf func() string, check func(context.Context, *Step)) {
	r.stepTimeout(ctx, name, title, skipIf, r.opts.StepTimeout, check)
}

// stepTimeout runs one check under its own deadline, turning a panic into
// a failed check: a smoke test that crashes tells the operator nothing.
func (r *runner) stepTimeout(ctx context.Context, name, title string, skipIf func() string, timeout time.Duration, check func(context.Context, *Step)) {
	s := Step{Name: name, Title: title}
	t0 := time.Now()
	if skipIf != nil {
		if why := skipIf(); why != "" {
			s.Status, s.Detail = Skip, why
			r.finish(&s, t0)
			return
		}
	}
	fmt.Fprintf(r.opts.Progress, "smoke: %-18s %s …\n", name, title)
	if err := ctx.Err(); err != nil {
		s.fail("not run: "+err.Error(), "the smoke test was interrupted; run it again")
		r.finish(&s, t0)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	func() {
		defer func() {
			if p := recover(); p != nil {
				s.fail(fmt.Sprintf("internal error in the smoke test: %v", p), "this is a bug in the smoke test; report it with the output above")
			}
		}()
		check(cctx, &s)
	}()
	if s.Status == "" {
		s.fail("the check reached no verdict", "this is a bug in the smoke test")
	}
	r.finish(&s, t0)
}

func (r *runner) finish(s *Step, t0 time.Time) {
	s.DurationMS = ms(time.Since(t0))
	// Redacted before the progress line, not only in the final report.
	s.Detail, s.Hint = redactSecret(s.Detail, r.opts.Outputs.GatewayAPIKey), redactSecret(s.Hint, r.opts.Outputs.GatewayAPIKey)
	fmt.Fprintf(r.opts.Progress, "smoke: %-18s %s (%s) %s\n", s.Name, strings.ToUpper(string(s.Status)), formatMS(s.DurationMS), oneLine(s.Detail))
	r.report.Steps = append(r.report.Steps, *s)
}

// connect gives r its HTTP client, sized for concurrency requests at once,
// and an OpenAI client on the stack's gateway through it.
func (r *runner) connect(concurrency int) {
	r.http = newHTTPClient(concurrency)
	cfg := openai.DefaultConfig(r.opts.Outputs.GatewayAPIKey)
	cfg.BaseURL = r.opts.Outputs.GatewayURL + "/v1"
	cfg.HTTPClient = r.http
	r.openai = openai.NewClientWithConfig(cfg)
}

func newHTTPClient(concurrency int) *http.Client {
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           dialer.DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			MaxIdleConns:          concurrency + 4,
			MaxIdleConnsPerHost:   concurrency + 4,
			IdleConnTimeout:       30 * time.Second,
			ExpectContinueTimeout: time.Second,
			ForceAttemptHTTP2:     true,
		},
		// Redirects are followed only within the same host: a gateway
		// URL that redirects elsewhere would carry the key along.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 3 || req.URL.Host != via[0].URL.Host {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
}

// newRunID tags this run's cache probe, so a previous run's cached answer
// cannot make the cache look like it works.
func newRunID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
