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
}

// Available says whether the upstream can take a request now, without
// claiming a half-open probe. An open breaker whose cool-down is over
// counts: the next request will be its probe (see Breaker.Admits).
func (u *Upstream) Available() bool {
	return u.Disabled == "" && u.Breaker.Admits()
}

// Price is in US dollars per million tokens. CachedInputPerMTok prices the
// prompt tokens an upstream served from its prompt cache; the gateway sets
// it to InputPerMTok when the config gives no cache price.
type Price struct{ InputPerMTok, OutputPerMTok, CachedInputPerMTok float64 }

// Target is one link of a model's chain.
type Target struct {
	Upstream *Upstream
	// Model is the model id to send to this upstream; empty keeps the
	// client's.
	Model string
	Price Price
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

// Run tries the chain: up to p.Attempts tries on each upstream, with backoff
// between them, then the next upstream (at once after an attempt marked
// Fallback). It stops at the first attempt that answers the client or
// commits bytes to it. On exhaustion the error is an *ExhaustedError; when
// ctx ends it is ErrClientGone wrapping ctx's cause.
func (c Chain) Run(ctx context.Context, p Policy, h Hooks, try func(ctx context.Context, t *Target) Attempt) (Outcome, error) {
	var out Outcome
	prev := ""
	for i := range c {
		t := &c[i]
		u := t.Upstream
		if u.Disabled != "" {
			out.Failures = append(out.Failures, Failure{Upstream: u.Name, Err: errors.New(u.Disabled)})
			continue
		}
		if prev != "" && h.Fallback != nil {
			h.Fallback(prev, u.Name)
		}
		prev = u.Name
		f := Failure{Upstream: u.Name}
		for n := 1; n <= p.Attempts; n++ {
			ok, probe, retryIn := u.Breaker.Allow()
			if !ok {
				if f.Err == nil {
					f.Err = errCircuitOpen(u.Breaker.LastErr(), retryIn)
				}
				break
			}
			if n > 1 && h.Retry != nil {
				h.Retry(u.Name)
			}
			out.Attempts++
			f.Attempts = n
			a := try(ctx, t)
			if ctx.Err() != nil && a.Err != nil {
				u.Breaker.Release(probe)
				return out, fmt.Errorf("%w: %w", ErrClientGone, context.Cause(ctx))
			}
			if h.Attempt != nil {
				h.Attempt(u.Name, a)
			}
			if a.Err == nil {
				u.Breaker.Success()
				out.Target = t
				return out, nil
			}
			f.Err, f.Timeout = a.Err, a.Timeout
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
				break
			}
			if !a.Retryable {
				// A failure no other try would fix (the request could not
				// be built, the answer is too large): no verdict on the
				// upstream's health, and no point in going on.
				u.Breaker.Release(probe)
				out.Failures = append(out.Failures, f)
				return out, &ExhaustedError{Failures: out.Failures}
			}
			u.Breaker.Failure(a.Err, probe)
			if a.Committed {
				out.Failures = append(out.Failures, f)
				return out, &ExhaustedError{Failures: out.Failures}
			}
			if n == p.Attempts {
				break
			}
			wait, ok := p.Backoff(n, a.RetryAfter)
			if !ok {
				f.Err = fmt.Errorf("%w; Retry-After %s exceeds backoff_max, falling back", a.Err, a.RetryAfter)
				break
			}
			if err := sleep(ctx, wait); err != nil {
				return out, fmt.Errorf("%w: %w", ErrClientGone, context.Cause(ctx))
			}
		}
		out.Failures = append(out.Failures, f)
	}
	return out, &ExhaustedError{Failures: out.Failures}
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

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// CostCached is Cost when cached of the prompt tokens came from the
// upstream's prompt cache.
func (p Price) CostCached(prompt, cached, completion int) float64 {
	cached = min(max(cached, 0), prompt)
	return (float64(prompt-cached)*p.InputPerMTok + float64(cached)*p.CachedInputPerMTok + float64(completion)*p.OutputPerMTok) / 1e6
}

// Cost is what prompt and completion tokens cost at p, in dollars.
func (p Price) Cost(prompt, completion int) float64 {
	return (float64(prompt)*p.InputPerMTok + float64(completion)*p.OutputPerMTok) / 1e6
}
