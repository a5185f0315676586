// Package migration produces the evidence for moving a team's traffic onto
// a relay: the table of latency, availability, cost per million tokens,
// monthly cost and savings, measured rather than assumed.
//
// Before a migration, Compare sends the same prompts to two or more
// upstreams of a gateway config and measures them side by side. After it,
// Report reads the same figures for the traffic the gateway really served
// from Prometheus. Both render a text or Markdown table, JSON and a PNG chart
// of the latency distributions.
package migration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/relaygate/relaygate/service/config"
)

// StreamMode says which requests of a comparison are streamed.
type StreamMode string

// Stream modes. Mixed alternates: each prompt is sent streamed and not on
// alternate repetitions, and every upstream gets the same prompt in the
// same mode, so TTFT and whole-answer latency are both measured on the same
// prompts.
const (
	StreamMixed StreamMode = "mixed"
	StreamOn    StreamMode = "on"
	StreamOff   StreamMode = "off"
)

// CompareOptions configures Compare.
type CompareOptions struct {
	// Model is a model name of the config. Each upstream gets it under the
	// id its route entry gives (the `model` of the entry), else this name.
	Model string
	// Upstreams are the config's upstreams to compare, in table order. Empty
	// means the model's route.
	Upstreams []string
	// Prompts are sent round-robin; PromptSource names them in the output.
	Prompts      []Prompt
	PromptSource string
	// Requests is how many requests each upstream gets.
	Requests int
	// Concurrency bounds the requests in flight on each upstream.
	Concurrency int
	Stream      StreamMode
	// Timeout bounds one request; zero uses each upstream's configured
	// timeout, as the gateway would.
	Timeout time.Duration
	// MonthlyTokens is the volume (prompt plus completion tokens a month)
	// that monthly cost and savings are computed at; zero leaves them out.
	MonthlyTokens float64
	// NoWarmup skips opening connections (GET /models) before measuring.
	// Warm-up keeps TLS handshakes out of the measured latencies: a gateway
	// in production keeps its connections open.
	NoWarmup bool
	// Progress, when set, is called after each request completes, from one
	// goroutine at a time. It must return quickly.
	Progress func(Progress)
}

// Progress is how far a comparison has got.
type Progress struct {
	Done, Total int
	Upstreams   []UpstreamProgress
}

// UpstreamProgress is one upstream's share of Progress.
type UpstreamProgress struct {
	Name         string
	Done, Failed int
}

// target is one upstream as compared: where to send, what, and at which
// price.
type target struct {
	name, model, baseURL string
	price                config.Price
	disabled             string
	timeout              time.Duration
	client               *openai.Client
	transport            *http.Transport
}

// Compare measures the upstreams against each other. The requests are
// interleaved: the schedule goes round by round, each round sends one
// prompt to every upstream (in an order that rotates, so none is always
// first), and a round's request to an upstream waits for a free slot of
// that upstream's concurrency. So every upstream sees the same prompts at
// the same pace and at the same time of day; a slow upstream slows the run,
// not the comparison.
//
// An upstream that fails (a wrong key, a refused connection, timeouts) is
// measured as failing; only a wrong option is an error. When ctx ends
// early, Compare returns what completed, marked Interrupted, with ctx's
// error.
func Compare(ctx context.Context, cfg *config.Config, opts CompareOptions) (*CompareResult, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	model, targets, err := resolveTargets(cfg, opts)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, t := range targets {
			if t.transport != nil {
				t.transport.CloseIdleConnections()
			}
		}
	}()

	r := &comparison{opts: opts, targets: targets, tallies: make([]tally, len(targets))}
	for i := range r.tallies {
		r.tallies[i].failures = map[string]int{}
	}
	res := &CompareResult{
		Model:          model.Name,
		Started:        time.Now().UTC(),
		Requests:       opts.Requests,
		Concurrency:    opts.Concurrency,
		Stream:         opts.Stream,
		PromptSource:   opts.PromptSource,
		Prompts:        len(opts.Prompts),
		MonthlyTokens:  opts.MonthlyTokens,
		ReferencePrice: pricePtr(model.ReferencePrice),
	}
	if !opts.NoWarmup {
		r.warmUp(ctx)
	}
	r.dispatch(ctx)
	res.Finished = time.Now().UTC()
	for i, t := range targets {
		res.Upstreams = append(res.Upstreams, r.tallies[i].result(t, model.ReferencePrice, opts.MonthlyTokens))
	}
	if err := ctx.Err(); err != nil {
		res.Interrupted = true
		return res, fmt.Errorf("compare interrupted: %w", err)
	}
	return res, nil
}

func (o *CompareOptions) validate() error {
	var errs []error
	if o.Model == "" {
		errs = append(errs, errors.New("a model is required"))
	}
	if len(o.Prompts) == 0 {
		errs = append(errs, errors.New("no prompts to send"))
	}
	if o.Requests < 1 {
		errs = append(errs, fmt.Errorf("requests per upstream must be at least 1, got %d", o.Requests))
	}
	if o.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("concurrency must be at least 1, got %d", o.Concurrency))
	}
	switch o.Stream {
	case StreamMixed, StreamOn, StreamOff:
	case "":
		o.Stream = StreamMixed
	default:
		errs = append(errs, fmt.Errorf("stream mode %q: use mixed, on or off", o.Stream))
	}
	if o.Timeout < 0 {
		errs = append(errs, errors.New("timeout must not be negative"))
	}
	if !(o.MonthlyTokens >= 0) {
		errs = append(errs, errors.New("monthly tokens must not be negative"))
	}
	return errors.Join(errs...)
}

// resolveTargets finds the model and the upstreams to compare, with the id
// and price each is sent and charged under.
func resolveTargets(cfg *config.Config, opts CompareOptions) (*config.Model, []*target, error) {
	var model *config.Model
	var names []string
	for i := range cfg.Models {
		if cfg.Models[i].Name == opts.Model {
			model = &cfg.Models[i]
		}
		names = append(names, cfg.Models[i].Name)
	}
	if model == nil {
		return nil, nil, fmt.Errorf("model %q is not in the config (models: %v)", opts.Model, names)
	}
	ups := opts.Upstreams
	if len(ups) == 0 {
		for _, e := range model.Route {
			ups = append(ups, e.Upstream)
		}
	}
	var targets []*target
	for _, name := range ups {
		u, ok := cfg.Upstream(name)
		if !ok {
			return nil, nil, fmt.Errorf("upstream %q is not in the config", name)
		}
		if slices.ContainsFunc(targets, func(t *target) bool { return t.name == name }) {
			return nil, nil, fmt.Errorf("upstream %q is listed twice", name)
		}
		entry := config.RouteEntry{Upstream: name}
		for _, e := range model.Route {
			if e.Upstream == name {
				entry = e
			}
		}
		t := &target{
			name:     name,
			model:    model.Name,
			baseURL:  u.BaseURL,
			price:    model.PriceFor(entry),
			disabled: u.Disabled,
			timeout:  u.Timeout.D(),
		}
		if entry.Model != "" {
			t.model = entry.Model
		}
		if opts.Timeout > 0 {
			t.timeout = opts.Timeout
		}
		if t.disabled == "" {
			t.transport = &http.Transport{
				Proxy:               http.ProxyFromEnvironment,
				DialContext:         (&net.Dialer{Timeout: u.ConnectTimeout.D(), KeepAlive: 30 * time.Second}).DialContext,
				TLSHandshakeTimeout: u.ConnectTimeout.D(),
				MaxIdleConns:        opts.Concurrency,
				MaxIdleConnsPerHost: opts.Concurrency,
				IdleConnTimeout:     90 * time.Second,
				ForceAttemptHTTP2:   true,
			}
			c := openai.DefaultConfig(u.APIKey)
			c.BaseURL = u.BaseURL
			c.HTTPClient = &http.Client{Transport: t.transport}
			t.client = openai.NewClientWithConfig(c)
		}
		targets = append(targets, t)
	}
	if len(targets) == 0 {
		return nil, nil, errors.New("no upstreams to compare")
	}
	return model, targets, nil
}

// comparison is one run of Compare.
type comparison struct {
	opts    CompareOptions
	targets []*target

	mu      sync.Mutex
	tallies []tally
	done    int
}

// warmupLimit bounds each warm-up request: an upstream whose /models is
// slow or missing must not hold up the measurements for its whole timeout.
const warmupLimit = 15 * time.Second

// warmUp opens up to Concurrency connections to each upstream with
// GET /models, which costs no tokens. Its results are not measured: an
// upstream that refuses it will refuse the measured requests too.
func (r *comparison) warmUp(ctx context.Context) {
	var wg sync.WaitGroup
	for _, t := range r.targets {
		if t.client == nil {
			continue
		}
		for range r.opts.Concurrency {
			wg.Go(func() {
				wctx, cancel := context.WithTimeout(ctx, min(t.timeout, warmupLimit))
				defer cancel()
				_, _ = t.client.ListModels(wctx)
			})
		}
	}
	wg.Wait()
}

// streams says whether round i streams: in mixed mode each prompt
// alternates between its repetitions, whatever the size of the prompt set.
func (r *comparison) streams(i int) bool {
	switch r.opts.Stream {
	case StreamOn:
		return true
	case StreamOff:
		return false
	}
	n := len(r.opts.Prompts)
	return (i%n+i/n)%2 == 1
}

func (r *comparison) dispatch(ctx context.Context) {
	var active []int
	for i, t := range r.targets {
		if t.client != nil {
			active = append(active, i)
		}
	}
	if len(active) == 0 {
		return
	}
	slots := make([]chan struct{}, len(r.targets))
	for _, i := range active {
		slots[i] = make(chan struct{}, r.opts.Concurrency)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for round := range r.opts.Requests {
		p := &r.opts.Prompts[round%len(r.opts.Prompts)]
		stream := r.streams(round)
		for k := range active {
			i := active[(round+k)%len(active)]
			select {
			case slots[i] <- struct{}{}:
			case <-ctx.Done():
				return
			}
			if ctx.Err() != nil { // both were ready and select took the slot
				<-slots[i]
				return
			}
			wg.Go(func() {
				defer func() { <-slots[i] }()
				o := r.targets[i].send(ctx, p, stream)
				r.record(ctx, i, o)
			})
		}
	}
}

// record adds one outcome. A request cut short because the whole run was
// interrupted measured nothing and is dropped.
func (r *comparison) record(ctx context.Context, i int, o outcome) {
	if o.err != nil && ctx.Err() != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tallies[i].add(o)
	r.done++
	if r.opts.Progress == nil {
		return
	}
	p := Progress{Done: r.done, Total: r.opts.Requests * r.activeCount()}
	for j, t := range r.targets {
		if t.client == nil {
			continue
		}
		tl := &r.tallies[j]
		p.Upstreams = append(p.Upstreams, UpstreamProgress{Name: t.name, Done: tl.sent, Failed: tl.errors + tl.timeouts})
	}
	r.opts.Progress(p)
}

func (r *comparison) activeCount() int {
	n := 0
	for _, t := range r.targets {
		if t.client != nil {
			n++
		}
	}
	return n
}
