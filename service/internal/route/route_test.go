package route

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestBreakerLifecycle(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	b := NewBreaker(3, 30*time.Second)
	b.now = clk.now
	var changes []string
	b.OnChange = func(from, to BreakerState) { changes = append(changes, from.String()+">"+to.String()) }

	for i := 0; i < 2; i++ {
		b.Failure(errors.New("boom"), false)
	}
	if ok, _, _ := b.Allow(); !ok {
		t.Fatal("open after 2 of 3 failures")
	}
	b.Success() // success resets the count
	for i := 0; i < 3; i++ {
		b.Failure(errors.New("boom"), false)
	}
	if ok, _, retryIn := b.Allow(); ok || retryIn != 30*time.Second {
		t.Fatalf("Allow = %v, %s; want refused for 30s", ok, retryIn)
	}
	clk.t = clk.t.Add(31 * time.Second)
	ok, probe, _ := b.Allow()
	if !ok || !probe {
		t.Fatalf("Allow after the cool-down = %v, probe %v; want the probe", ok, probe)
	}
	if ok, _, retryIn := b.Allow(); ok || retryIn != 0 {
		t.Fatalf("Allow while the probe is out = %v, %s; want refused, the probe deciding", ok, retryIn)
	}
	b.Failure(errors.New("still down"), true) // failed probe: open again
	if ok, _, _ := b.Allow(); ok {
		t.Fatal("open breaker let a request through after a failed probe")
	}
	clk.t = clk.t.Add(31 * time.Second)
	if ok, probe, _ := b.Allow(); !ok || !probe {
		t.Fatal("no second probe")
	}
	b.Success()
	if b.State() != Closed {
		t.Fatalf("state %s after a good probe", b.State())
	}
	want := "closed>open,open>half-open,half-open>open,open>half-open,half-open>closed"
	if got := strings.Join(changes, ","); got != want {
		t.Errorf("transitions %s, want %s", got, want)
	}
}

func TestBreakerReleaseFreesTheProbe(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	b := NewBreaker(1, time.Second)
	b.now = clk.now
	b.Failure(errors.New("x"), false)
	clk.t = clk.t.Add(2 * time.Second)
	ok, probe, _ := b.Allow()
	if !ok || !probe {
		t.Fatal("no probe")
	}
	b.Release(probe)
	if ok, _, _ := b.Allow(); !ok {
		t.Fatal("released probe slot not reusable")
	}
}

// TestBreakerLateOutcomes: requests let through while the breaker was
// closed can end long after it opened (up to their timeout). Their
// failures must not push the probe back, and their releases must not free
// the probe slot for a second probe.
func TestBreakerLateOutcomes(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	b := NewBreaker(1, 10*time.Second)
	b.now = clk.now
	b.Failure(errors.New("down"), false) // opens
	clk.t = clk.t.Add(9 * time.Second)
	b.Failure(errors.New("late"), false) // an old request's failure
	clk.t = clk.t.Add(2 * time.Second)   // 11s after opening
	ok, probe, _ := b.Allow()
	if !ok || !probe {
		t.Fatalf("Allow 11s after opening with a 10s cool-down = %v, probe %v; a late failure restarted the cool-down", ok, probe)
	}
	b.Release(false) // an old request whose client left
	if ok, _, _ := b.Allow(); ok {
		t.Fatal("a second probe went out after an unrelated release")
	}
	b.Failure(errors.New("late"), false) // an old request failing while the probe is out
	if b.State() != HalfOpen {
		t.Fatalf("state %s after a late failure; the probe is still out", b.State())
	}
	if ok, _, _ := b.Allow(); ok {
		t.Fatal("a late failure ended the probe")
	}
	b.Success() // the probe answered
	if b.State() != Closed {
		t.Fatalf("state %s after the probe succeeded", b.State())
	}
}

// TestAvailableOnceTheCooldownIsOver: an open breaker only turns half-open
// inside Allow, when a request arrives. A gateway whose load balancer took
// it out for having no available upstream gets no request, so Available
// must turn true on the clock alone, without any Allow.
func TestAvailableOnceTheCooldownIsOver(t *testing.T) {
	const cooldown = 30 * time.Second
	// opened trips the breaker (two failures) and lets wait pass.
	opened := func(b *Breaker, clk *fakeClock, wait time.Duration) {
		b.Failure(errors.New("x"), false)
		b.Failure(errors.New("x"), false)
		clk.t = clk.t.Add(wait)
	}
	tests := []struct {
		name     string
		setup    func(b *Breaker, clk *fakeClock)
		disabled string
		want     bool
		state    BreakerState
	}{
		{"closed", func(*Breaker, *fakeClock) {}, "", true, Closed},
		{"failing but below the threshold", func(b *Breaker, _ *fakeClock) { b.Failure(errors.New("x"), false) }, "", true, Closed},
		{"open within the cool-down", func(b *Breaker, clk *fakeClock) {
			opened(b, clk, cooldown-time.Nanosecond)
		}, "", false, Open},
		{"open at the end of the cool-down", func(b *Breaker, clk *fakeClock) {
			opened(b, clk, cooldown)
		}, "", true, Open},
		{"open long after the cool-down", func(b *Breaker, clk *fakeClock) {
			opened(b, clk, time.Hour)
		}, "", true, Open},
		{"half-open with the probe out", func(b *Breaker, clk *fakeClock) {
			opened(b, clk, cooldown)
			b.Allow()
		}, "", true, HalfOpen},
		{"failed probe opens it again", func(b *Breaker, clk *fakeClock) {
			opened(b, clk, cooldown)
			b.Allow()
			b.Failure(errors.New("still down"), true)
		}, "", false, Open},
		{"disabled whatever the breaker says", func(*Breaker, *fakeClock) {}, "no key", false, Closed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &fakeClock{t: time.Unix(1000, 0)}
			b := NewBreaker(2, cooldown)
			b.now = clk.now
			u := &Upstream{Name: "a", Breaker: b, Disabled: tt.disabled}
			tt.setup(b, clk)
			if got := u.Available(); got != tt.want {
				t.Errorf("Available = %v, want %v", got, tt.want)
			}
			// Asking must not move the breaker: only a request's Allow
			// claims the probe.
			if got := b.State(); got != tt.state {
				t.Errorf("state %s after Available, want %s", got, tt.state)
			}
			// An open breaker that counts as available must let the next
			// request through as its probe. (Half-open counts as available
			// while its probe is out, as it always has: that probe will
			// settle it, and /ready should not flap for its duration.)
			if tt.want && tt.state == Open {
				if ok, _, _ := b.Allow(); !ok {
					t.Error("Available said yes but Allow refused the next request")
				}
			}
		})
	}
}

func TestBackoffFullJitterWithinBounds(t *testing.T) {
	p := Policy{Attempts: 5, BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second}
	for n := 1; n <= 6; n++ {
		ceil := min(p.BackoffMin<<(n-1), p.BackoffMax)
		for i := 0; i < 200; i++ {
			w, ok := p.Backoff(n, 0)
			if !ok || w < 0 || w > ceil {
				t.Fatalf("retry %d: wait %s outside [0, %s]", n, w, ceil)
			}
		}
	}
	if w, ok := p.Backoff(1, 700*time.Millisecond); !ok || w < 700*time.Millisecond {
		t.Errorf("Retry-After 700ms gave %s", w)
	}
	if _, ok := p.Backoff(1, 2*time.Second); ok {
		t.Error("a Retry-After beyond backoff_max must fall back, not wait")
	}
	if _, ok := p.Backoff(1, ParseRetryAfter("1e30", time.Now())); ok {
		t.Error("an absurd Retry-After must fall back, not retry at once")
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := map[string]time.Duration{
		"":                              0,
		"3":                             3 * time.Second,
		"0.5":                           500 * time.Millisecond,
		"-1":                            0,
		"soon":                          0,
		"Thu, 01 Jan 2026 00:00:10 GMT": 10 * time.Second,
		"Wed, 31 Dec 2025 00:00:10 GMT": 0,
		// Past what a Duration holds: the longest wait, never an
		// overflow into a negative one (an immediate retry).
		"99999999999": math.MaxInt64,
		"1e30":        math.MaxInt64,
		"inf":         math.MaxInt64,
		"NaN":         0,
	}
	for in, want := range tests {
		if got := ParseRetryAfter(in, now); got != want {
			t.Errorf("ParseRetryAfter(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestRetryableStatus(t *testing.T) {
	for code, want := range map[int]bool{400: false, 401: false, 404: false, 408: true, 409: true, 422: false, 429: true, 500: true, 502: true, 503: true, 504: true} {
		if RetryableStatus(code) != want {
			t.Errorf("RetryableStatus(%d) = %v", code, !want)
		}
	}
}

func newChain(names ...string) Chain {
	var c Chain
	for _, n := range names {
		c = append(c, Target{Upstream: &Upstream{Name: n, Breaker: NewBreaker(100, time.Hour)}})
	}
	return c
}

func TestRun(t *testing.T) {
	fail := Attempt{Err: errors.New("503"), Retryable: true}
	refused := Attempt{Err: errors.New("401"), Fallback: true}
	ok := Attempt{}
	tests := []struct {
		name      string
		script    map[string][]Attempt // per upstream, one per try
		disabled  string
		want      string // answering upstream, "" for none
		wantTries string
		wantErr   string
		retries   int
		fallbacks int
		failuresA int // consecutive failures a's breaker holds afterwards
	}{
		{"first try answers", map[string][]Attempt{"a": {ok}}, "", "a", "a", "", 0, 0, 0},
		{"retry then answer", map[string][]Attempt{"a": {fail, ok}}, "", "a", "a,a", "", 1, 0, 0},
		{"fallback after the budget", map[string][]Attempt{"a": {fail, fail, fail}, "b": {ok}}, "", "b", "a,a,a,b", "", 2, 1, 3},
		{"non-retryable stops the chain", map[string][]Attempt{"a": {{Err: errors.New("bad")}}}, "", "", "a", "a: bad", 0, 0, 0},
		{"committed failure is never retried", map[string][]Attempt{"a": {{Err: errors.New("cut"), Retryable: true, Committed: true}}}, "", "", "a", "a: cut", 0, 0, 1},
		{"disabled upstream is skipped", map[string][]Attempt{"b": {ok}}, "a", "b", "b", "", 0, 0, 0},
		{"all fail", map[string][]Attempt{"a": {fail, fail, fail}, "b": {fail, fail, fail}}, "", "", "a,a,a,b,b,b", "a: 503 (after 3 attempts); b: 503 (after 3 attempts)", 4, 1, 3},
		{"refusal falls back at once", map[string][]Attempt{"a": {refused}, "b": {ok}}, "", "b", "a,b", "", 0, 1, 1},
		{"refusal after a retry falls back", map[string][]Attempt{"a": {fail, refused}, "b": {ok}}, "", "b", "a,a,b", "", 1, 1, 2},
		{"refusals exhaust the chain", map[string][]Attempt{"a": {refused}, "b": {refused}}, "", "", "a,b", "a: 401; b: 401", 0, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newChain("a", "b")
			if tt.disabled != "" {
				c[0].Upstream.Disabled = "no key"
			}
			var tries []string
			retries, fallbacks := 0, 0
			h := Hooks{Retry: func(string) { retries++ }, Fallback: func(string, string) { fallbacks++ }}
			p := Policy{Attempts: 3, BackoffMin: time.Microsecond, BackoffMax: time.Microsecond}
			out, err := c.Run(context.Background(), p, h, func(_ context.Context, tg *Target) Attempt {
				name := tg.Upstream.Name
				tries = append(tries, name)
				a := tt.script[name][0]
				tt.script[name] = tt.script[name][1:]
				return a
			})
			if got := strings.Join(tries, ","); got != tt.wantTries {
				t.Errorf("tries %s, want %s", got, tt.wantTries)
			}
			answered := ""
			if out.Target != nil {
				answered = out.Target.Upstream.Name
			}
			if answered != tt.want {
				t.Errorf("answered by %q, want %q", answered, tt.want)
			}
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("err %v, want %q", err, tt.wantErr)
			}
			if retries != tt.retries || fallbacks != tt.fallbacks {
				t.Errorf("retries %d fallbacks %d, want %d %d", retries, fallbacks, tt.retries, tt.fallbacks)
			}
			if got := c[0].Upstream.Breaker.Status().ConsecutiveFailures; got != tt.failuresA {
				t.Errorf("a's breaker holds %d failures, want %d", got, tt.failuresA)
			}
		})
	}
}

func TestRunStopsWhenTheClientLeaves(t *testing.T) {
	c := newChain("a", "b")
	ctx, cancel := context.WithCancel(context.Background())
	p := Policy{Attempts: 3, BackoffMin: time.Hour, BackoffMax: time.Hour}
	calls := 0
	_, err := c.Run(ctx, p, Hooks{}, func(context.Context, *Target) Attempt {
		calls++
		cancel()
		return Attempt{Err: errors.New("canceled"), Retryable: true}
	})
	if !errors.Is(err, ErrClientGone) || calls != 1 {
		t.Errorf("err %v after %d calls, want ErrClientGone after 1", err, calls)
	}
	if c[0].Upstream.Breaker.Status().ConsecutiveFailures != 0 {
		t.Error("a client leaving counted against the upstream")
	}
}

func TestExhaustedTimeout(t *testing.T) {
	e := &ExhaustedError{Failures: []Failure{{Upstream: "a", Timeout: true}, {Upstream: "b", Timeout: true}}}
	if !e.Timeout() {
		t.Error("all timeouts should be a timeout")
	}
	e.Failures[1].Timeout = false
	if e.Timeout() {
		t.Error("a mix is not a timeout")
	}
}

// TestExhaustedVerdicts: what an exhausted chain says about why, for the
// gateway to answer 429 (every upstream asked was rate limited) or 503
// (every circuit open) rather than 502.
func TestExhaustedVerdicts(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	limited := func(after time.Duration) Attempt {
		return Attempt{Err: errors.New("HTTP 429"), Retryable: true, RateLimited: true, RetryAfter: after}
	}
	failed := Attempt{Err: errors.New("HTTP 503"), Retryable: true}
	tests := []struct {
		name string
		// per upstream: its attempt, or nil for one whose breaker is
		// open since openedAgo, or disabled.
		attempts  []*Attempt
		openedAgo []time.Duration
		disabled  []bool
		limited   bool
		after     time.Duration
		open      bool
		retryIn   time.Duration
	}{
		{name: "every upstream 429: shortest Retry-After",
			attempts: []*Attempt{ptr(limited(7 * time.Second)), ptr(limited(3 * time.Second)), ptr(limited(0))},
			limited:  true, after: 3 * time.Second},
		{name: "429 without Retry-After",
			attempts: []*Attempt{ptr(limited(0))}, limited: true},
		{name: "one 503 among the 429s is an outage",
			attempts: []*Attempt{ptr(limited(time.Second)), &failed}},
		{name: "429 beside an open circuit and a disabled upstream",
			attempts: []*Attempt{nil, ptr(limited(2 * time.Second)), nil}, openedAgo: []time.Duration{10 * time.Second, 0, 0},
			disabled: []bool{false, false, true}, limited: true, after: 2 * time.Second},
		{name: "every circuit open: the nearest probe",
			attempts: []*Attempt{nil, nil}, openedAgo: []time.Duration{10 * time.Second, 25 * time.Second},
			open: true, retryIn: 5 * time.Second},
		{name: "open circuits beside a disabled upstream",
			attempts: []*Attempt{nil, nil}, openedAgo: []time.Duration{20 * time.Second, 0}, disabled: []bool{false, true},
			open: true, retryIn: 10 * time.Second},
		{name: "an open circuit beside a failure is an outage",
			attempts: []*Attempt{nil, &failed}, openedAgo: []time.Duration{10 * time.Second, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var chain Chain
			byName := map[string]*Attempt{}
			for i, a := range tt.attempts {
				u := &Upstream{Name: string(rune('a' + i)), Breaker: NewBreaker(1, 30*time.Second)}
				u.Breaker.now = clk.now
				if tt.disabled != nil && tt.disabled[i] {
					u.Disabled = "off"
				} else if a == nil {
					u.Breaker.now = func() time.Time { return clk.t.Add(-tt.openedAgo[i]) }
					u.Breaker.Failure(errors.New("down"), false)
					u.Breaker.now = clk.now
				}
				byName[u.Name] = a
				chain = append(chain, Target{Upstream: u})
			}
			_, err := chain.Run(context.Background(), Policy{Attempts: 1, BackoffMax: time.Minute}, Hooks{},
				func(_ context.Context, t *Target) Attempt { return *byName[t.Upstream.Name] })
			var ex *ExhaustedError
			if !errors.As(err, &ex) {
				t.Fatalf("err %v, want exhausted", err)
			}
			if ok, after := ex.RateLimited(); ok != tt.limited || after != tt.after {
				t.Errorf("RateLimited = %v, %s; want %v, %s", ok, after, tt.limited, tt.after)
			}
			if ok, in := ex.CircuitsOpen(); ok != tt.open || in != tt.retryIn {
				t.Errorf("CircuitsOpen = %v, %s; want %v, %s", ok, in, tt.open, tt.retryIn)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestUsageCost is Anthropic's arithmetic: each kind of token at its own
// price, and Cost the same as UsageCost without cache tokens.
func TestUsageCost(t *testing.T) {
	p := Price{InputPerMTok: 3, OutputPerMTok: 15, CacheWritePerMTok: 3.75, CacheReadPerMTok: 0.30}
	tests := []struct {
		name string
		u    Usage
		want float64
	}{
		{"input and output", Usage{Input: 1_000_000, Output: 1_000_000}, 18},
		{"cache write", Usage{CacheWrite: 2_000_000}, 7.5},
		{"cache read", Usage{CacheRead: 10_000_000}, 3},
		{"all four", Usage{Input: 100, CacheWrite: 1000, CacheRead: 5000, Output: 200}, (100*3 + 1000*3.75 + 5000*0.30 + 200*15) / 1e6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.UsageCost(tc.u); math.Abs(got-tc.want) > 1e-12 {
				t.Errorf("UsageCost(%+v) = %v, want %v", tc.u, got, tc.want)
			}
		})
	}
	if a, b := p.Cost(123, 456), p.UsageCost(Usage{Input: 123, Output: 456}); a != b {
		t.Errorf("Cost %v != UsageCost %v", a, b)
	}
}
