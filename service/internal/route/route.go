// Package route decides where a request goes: each model's ordered chain of
// upstreams, retries with backoff on one upstream, fallback to the next, and
// a circuit breaker per upstream. It knows nothing of HTTP bodies; the
// gateway hands it one attempt at a time as a function.
package route

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/relaygate/relaygate/internal/ctxsleep"
)

// Upstream is an OpenAI-compatible API and the state the gateway keeps on it.
type Upstream struct {
	Name string
	// BaseURL has no trailing slash; request paths are appended to it.
	BaseURL string
	// Auth is the whole Authorization header value ("Bearer …"), or empty.
	Auth string
	// Timeout bounds one whole attempt, body included.
	Timeout   time.Duration
	Transport http.RoundTripper
	Breaker   *Breaker
	// Disabled, when not empty, says why the upstream takes no traffic.
	Disabled string
	// Health is the upstream's active probe's verdict; nil: no probe, the
	// upstream counts as healthy.
	Health *Health
	// Load counts the requests outstanding on the upstream, for pools
	// (least busy) and relaygate_upstream_inflight; nil: not counted.
	Load *Load
}

// Available says whether the upstream can take a request now, without
// claiming a half-open probe. An open breaker whose cool-down is over
// counts: the next request will be its probe (see Breaker.Admits). A
// failing health probe takes it out.
func (u *Upstream) Available() bool {
	return u.Disabled == "" && u.Health.Up() && u.Breaker.Admits()
}

// Price is in US dollars per million tokens. Prompt caching is priced
// apart, as vendors bill it: writing a prefix into the cache costs more
// than plain input, reading it back far less.
type Price struct {
	InputPerMTok, OutputPerMTok         float64
	CacheWritePerMTok, CacheReadPerMTok float64
}

// Usage is one answer's tokens as a vendor bills them. Input excludes the
// cache's tokens (Anthropic's input_tokens), so the four add up to the
// whole prompt and output.
type Usage struct{ Input, CacheWrite, CacheRead, Output int }

// Target is one link of a model's chain: one upstream, or a pool of them.
type Target struct {
	Upstream *Upstream
	// Model is the model id to send to this upstream; empty keeps the
	// client's.
	Model string
	Price Price
	// Pool, when set, makes the link a pool: its members share the link's
	// requests, and Upstream, Model and Price are unused.
	Pool *Pool
}

// Members are the targets a link sends to: its pool's members, or itself.
func (t *Target) Members() []Target {
	if t.Pool != nil {
		return t.Pool.Members
	}
	return []Target{*t}
}

// Primary is the target a link tries first when nothing is busy: itself, or
// its pool's first member (what a cache hit is priced at).
func (t *Target) Primary() *Target {
	if t.Pool != nil && len(t.Pool.Members) > 0 {
		return &t.Pool.Members[0]
	}
	return t
}

// Chain is a model's targets in the order they are tried.
type Chain []Target

// Attempt is what one try at one upstream came to.
type Attempt struct {
	// Err is nil when the attempt produced the client's answer (a success,
	// or an upstream 4xx passed back as it is).
	Err error
	// Retryable: the upstream failed in a way another try may fix.
	Retryable bool
	// Timeout: the failure was the upstream being too slow (504 rather
	// than 502 when every upstream fails so).
	Timeout bool
	// RetryAfter is the upstream's Retry-After, if it sent one.
	RetryAfter time.Duration
	// RateLimited: the upstream answered 429. When every upstream of a
	// chain did, the client hears a rate limit with the shortest
	// Retry-After, not an outage.
	RateLimited bool
	// Committed: bytes already reached the client, so whatever happened
	// nothing may be retried.
	Committed bool
	// Fallback: the upstream failed in a way another try at it will not
	// fix but another upstream may, such as refusing the gateway's own
	// key. The failure counts against its breaker, it is not retried, and
	// the chain moves on to the next upstream. Such an attempt must not
	// have committed anything to the client.
	Fallback bool
	// Healthy, with Fallback: the upstream answered properly, just not with
	// an answer to this request (it does not serve the model). Its breaker
	// counts a success: it is up, and other models may well need it.
	Healthy bool
}

// Failure is why one upstream of the chain did not answer.
type Failure struct {
	Upstream string
	Attempts int
	Err      error
	Timeout  bool
	// RateLimited and RetryAfter are those of the upstream's last attempt.
	RateLimited bool
	RetryAfter  time.Duration
	// CircuitOpen: the upstream was not asked, its breaker open; RetryIn
	// is how long until it lets a probe through (zero: a probe is out).
	CircuitOpen bool
	RetryIn     time.Duration
}

func (f Failure) String() string {
	if f.Attempts > 1 {
		return fmt.Sprintf("%s: %v (after %d attempts)", f.Upstream, f.Err, f.Attempts)
	}
	return fmt.Sprintf("%s: %v", f.Upstream, f.Err)
}

// ExhaustedError says that every upstream of a chain failed, and how.
type ExhaustedError struct{ Failures []Failure }

func (e *ExhaustedError) Error() string {
	parts := make([]string, len(e.Failures))
	for i, f := range e.Failures {
		parts[i] = f.String()
	}
	return "every upstream failed: " + strings.Join(parts, "; ")
}

// Timeout is true when every upstream failed by being too slow.
func (e *ExhaustedError) Timeout() bool {
	for _, f := range e.Failures {
		if !f.Timeout {
			return false
		}
	}
	return len(e.Failures) > 0
}

// RateLimited reports whether every upstream that was asked answered 429
// (the others disabled or their circuits open, at least one asked), and the
// shortest Retry-After those that sent one gave (zero: none did).
func (e *ExhaustedError) RateLimited() (ok bool, retryAfter time.Duration) {
	asked := 0
	for _, f := range e.Failures {
		if f.Attempts == 0 {
			continue
		}
		if !f.RateLimited {
			return false, 0
		}
		asked++
		if f.RetryAfter > 0 && (retryAfter == 0 || f.RetryAfter < retryAfter) {
			retryAfter = f.RetryAfter
		}
	}
	return asked > 0, retryAfter
}

// CircuitsOpen reports whether every upstream the chain has in service was
// skipped by its open breaker, none asked, and how long until the first of
// them lets a probe through (zero: a probe is out now).
func (e *ExhaustedError) CircuitsOpen() (ok bool, retryIn time.Duration) {
	open := 0
	for _, f := range e.Failures {
		switch {
		case f.CircuitOpen:
			if open == 0 || f.RetryIn < retryIn {
				retryIn = f.RetryIn
			}
			open++
		case f.Attempts > 0:
			return false, 0
		}
	}
	return open > 0, retryIn
}

// Hooks tell the caller about attempts, retries and fallbacks as they
// happen. Any may be nil.
type Hooks struct {
	// Attempt is told how each try at an upstream ended (not tries the
	// client abandoned: they say nothing about the upstream).
	Attempt  func(upstream string, a Attempt)
	Retry    func(upstream string)
	Fallback func(from, to string)
}

// Outcome is what Run did.
type Outcome struct {
	// Target answered the client (nil when none did).
	Target *Target
	// Failures lists the upstreams that failed before Target answered, or
	// all of them when none did.
	Failures []Failure
	Attempts int
}

// ErrClientGone is returned when the client's context ended the request.
var ErrClientGone = errors.New("client went away")

// Run tries the chain: up to p.Attempts tries on each link, with backoff
// between tries at one upstream, then the next link (at once after an
// attempt marked Fallback). A pool link spreads its tries over its members:
// each try goes to a member its balance picks, one not yet tried in this
// request first, so a retry after a failure goes to another member at once
// (no backoff), and a member that refused (Fallback) or whose circuit is
// open is passed over without using up a try. An upstream whose health
// probe fails is skipped like a disabled one. Run stops at the first
// attempt that answers the client or commits bytes to it. On exhaustion the
// error is an *ExhaustedError; when ctx ends it is ErrClientGone wrapping
// ctx's cause.
func (c Chain) Run(ctx context.Context, p Policy, h Hooks, try func(ctx context.Context, t *Target) Attempt) (Outcome, error) {
	var out Outcome
	prev := ""
	for i := range c {
		members, pool := c[i:i+1], c[i].Pool
		if pool != nil {
			members = pool.Members
		}
		if done, err := runLink(ctx, p, h, try, members, pool, &out, &prev); done {
			return out, err
		}
	}
	return out, &ExhaustedError{Failures: out.Failures}
}

// Member states within one link of one request (see runLink).
const (
	memberFresh   = iota // not asked yet
	memberRetry          // failed in a way another try may fix
	memberSkipped        // not to be asked again in this request
)

// linkTry is one member's part in a link: its failure so far.
type linkTry struct {
	idx int
	f   Failure
}

// runLink runs one link of the chain (see Run): done is true when Run must
// return err, false when the chain goes on to its next link.
func runLink(ctx context.Context, p Policy, h Hooks, try func(ctx context.Context, t *Target) Attempt,
	members []Target, pool *Pool, out *Outcome, prev *string) (done bool, err error) {
	var buf [4]linkTry
	tries := buf[:0]
	var stateBuf [8]int8
	var states []int8 // by member: memberFresh, memberRetry or memberSkipped
	if len(members) <= len(stateBuf) {
		states = stateBuf[:len(members)]
	} else {
		states = make([]int8, len(members))
	}
	// finish appends the failures of the members asked (or refused by
	// their breaker), in the order they were first tried.
	finish := func() {
		for _, lt := range tries {
			out.Failures = append(out.Failures, lt.f)
		}
	}
	used := 0  // tries spent on failures another try may fix
	asked := 0 // tries made on this link
	for used < p.Attempts {
		idx := -1
		if pool != nil {
			idx = pool.pick(states)
		} else if states[0] != memberSkipped && members[0].Upstream.Disabled == "" && members[0].Upstream.Health.Up() {
			idx = 0
			members[0].Upstream.Load.add(1)
		}
		if idx < 0 {
			break
		}
		t := &members[idx]
		u := t.Upstream
		var lt *linkTry
		for k := range tries {
			if tries[k].idx == idx {
				lt = &tries[k]
			}
		}
		if lt == nil {
			if len(tries) == 0 && *prev != "" && h.Fallback != nil {
				h.Fallback(*prev, u.Name)
			}
			tries = append(tries, linkTry{idx: idx, f: Failure{Upstream: u.Name}})
			lt = &tries[len(tries)-1]
		}
		*prev = u.Name
		if lt.f.Attempts > 0 {
			// Another try at the same upstream: back off first.
			wait, _ := p.Backoff(lt.f.Attempts, lt.f.RetryAfter)
			if !ctxsleep.Sleep(ctx, wait) {
				u.Load.add(-1)
				return true, fmt.Errorf("%w: %w", ErrClientGone, context.Cause(ctx))
			}
		}
		ok, probe, retryIn := u.Breaker.Allow()
		if !ok {
			u.Load.add(-1)
			if lt.f.Err == nil {
				lt.f.Err = errCircuitOpen(u.Breaker.LastErr(), retryIn)
				lt.f.CircuitOpen, lt.f.RetryIn = true, retryIn
			}
			states[idx] = memberSkipped
			continue
		}
		if asked > 0 && h.Retry != nil {
			h.Retry(u.Name)
		}
		asked++
		out.Attempts++
		lt.f.Attempts++
		a := try(ctx, t)
		u.Load.add(-1)
		if ctx.Err() != nil && a.Err != nil {
			u.Breaker.Release(probe)
			return true, fmt.Errorf("%w: %w", ErrClientGone, context.Cause(ctx))
		}
		if h.Attempt != nil {
			h.Attempt(u.Name, a)
		}
		if a.Err == nil {
			u.Breaker.Success()
			out.Target = t
			return true, nil
		}
		lt.f.Err, lt.f.Timeout = a.Err, a.Timeout
		lt.f.RateLimited, lt.f.RetryAfter = a.RateLimited, a.RetryAfter
		if a.Fallback && !a.Committed {
			// A failure (not a Release): an upstream that keeps
			// refusing us should open its circuit, so that later
			// requests go straight to the fallback and the outage
			// shows in relaygate_upstream_up.
			if a.Healthy {
				u.Breaker.Success()
			} else {
				u.Breaker.Failure(a.Err, probe)
			}
			states[idx] = memberSkipped
			continue
		}
		if !a.Retryable {
			// A failure no other try would fix (the request could not
			// be built, the answer is too large): no verdict on the
			// upstream's health, and no point in going on.
			u.Breaker.Release(probe)
			finish()
			return true, &ExhaustedError{Failures: out.Failures}
		}
		u.Breaker.Failure(a.Err, probe)
		if a.Committed {
			finish()
			return true, &ExhaustedError{Failures: out.Failures}
		}
		used++
		states[idx] = memberRetry
		if used < p.Attempts && a.RetryAfter > p.BackoffMax {
			// Not worth the wait (see Policy.Backoff): this upstream is
			// done for the request; another member may still answer.
			lt.f.Err = fmt.Errorf("%w; Retry-After %s exceeds backoff_max, falling back", a.Err, a.RetryAfter)
			states[idx] = memberSkipped
		}
	}
	if len(tries) == 0 {
		// No member was asked: say why each was passed over.
		for i := range members {
			if f, ok := skipped(members[i].Upstream); ok {
				out.Failures = append(out.Failures, f)
			}
		}
		return false, nil
	}
	finish()
	return false, nil
}

// skipped is the failure of an upstream passed over without being asked:
// disabled, its health probe failing, or its circuit open.
func skipped(u *Upstream) (Failure, bool) {
	switch {
	case u.Disabled != "":
		return Failure{Upstream: u.Name, Err: errors.New(u.Disabled)}, true
	case !u.Health.Up():
		return Failure{Upstream: u.Name, Err: u.Health.Err()}, true
	}
	if open, retryIn := u.Breaker.OpenFor(); open {
		return Failure{Upstream: u.Name, Err: errCircuitOpen(u.Breaker.LastErr(), retryIn), CircuitOpen: true, RetryIn: retryIn}, true
	}
	return Failure{}, false
}

// errCircuitOpen wraps the failure that opened the circuit, so that what
// it was (a timeout, a refused key) still shows through errors.As. A zero
// retryIn means a probe is out: its answer decides what comes next.
func errCircuitOpen(last error, retryIn time.Duration) error {
	when := "next probe in " + retryIn.Round(time.Second).String()
	if retryIn <= 0 {
		when = "a probe is in flight"
	}
	if last == nil {
		return fmt.Errorf("circuit open, %s", when)
	}
	return fmt.Errorf("circuit open (%w), %s", last, when)
}

// Cost is what prompt and completion tokens cost at p, in dollars.
func (p Price) Cost(prompt, completion int) float64 {
	return (float64(prompt)*p.InputPerMTok + float64(completion)*p.OutputPerMTok) / 1e6
}

// UsageCost is what u costs at p, in dollars: each kind of token at its own
// price, the vendor's arithmetic.
func (p Price) UsageCost(u Usage) float64 {
	return (float64(u.Input)*p.InputPerMTok + float64(u.CacheWrite)*p.CacheWritePerMTok +
		float64(u.CacheRead)*p.CacheReadPerMTok + float64(u.Output)*p.OutputPerMTok) / 1e6
}
