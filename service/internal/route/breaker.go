package route

import (
	"sync"
	"sync/atomic"
	"time"
)

// BreakerState is the position of an upstream's circuit breaker.
type BreakerState int

const (
	// Closed: traffic flows.
	Closed BreakerState = iota
	// Open: the upstream failed too often; requests skip it until the
	// cool-down ends.
	Open
	// HalfOpen: the cool-down ended and one probe request is in flight;
	// others still skip the upstream until the probe answers.
	HalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	default:
		return "closed"
	}
}

// Breaker is a consecutive-failure circuit breaker. A healthy upstream's
// requests never take its lock: the closed state and a zero failure count
// are read atomically, and only failures and recoveries lock.
type Breaker struct {
	threshold int
	cooldown  time.Duration
	now       func() time.Time
	// OnChange, when set, is told of every state change (metrics, logs).
	// It runs with the breaker's lock released.
	OnChange func(from, to BreakerState)

	// closed mirrors state == Closed, and clean mirrors failures == 0, for
	// the lock-free fast path; both are written under mu.
	closed, clean atomic.Bool

	mu       sync.Mutex
	state    BreakerState
	failures int
	openedAt time.Time
	probing  bool
	// lastErr is kept as an error, not text, so that a circuit-open
	// failure can wrap it: callers still tell what kind of failure opened
	// the circuit (errors.As), e.g. an upstream refusing the gateway's key.
	lastErr error
}

// NewBreaker opens after threshold consecutive failures and stays open for
// cooldown before letting one probe through.
func NewBreaker(threshold int, cooldown time.Duration) *Breaker {
	if threshold < 1 {
		threshold = 1
	}
	b := &Breaker{threshold: threshold, cooldown: cooldown, now: time.Now}
	b.closed.Store(true)
	b.clean.Store(true)
	return b
}

// setLocked records the state and the failure count; b.mu is held.
func (b *Breaker) setLocked(state BreakerState, failures int) {
	b.state, b.failures = state, failures
	b.closed.Store(state == Closed)
	b.clean.Store(failures == 0)
}

// Allow says whether a request may go to the upstream now. probe is true
// when the request is the breaker's single half-open probe: its caller
// must report the outcome with Success, Failure(err, true) or
// Release(true), and only its report ends the probe. retryIn says how long
// until an open breaker lets a probe through (zero while a probe is out:
// its answer decides).
func (b *Breaker) Allow() (ok, probe bool, retryIn time.Duration) {
	if b.closed.Load() {
		return true, false, 0
	}
	b.mu.Lock()
	switch b.state {
	case Closed:
		b.mu.Unlock()
		return true, false, 0
	case Open:
		left := b.cooldown - b.now().Sub(b.openedAt)
		if left > 0 {
			b.mu.Unlock()
			return false, false, left
		}
		b.setLocked(HalfOpen, b.failures)
		b.probing = true
		b.mu.Unlock()
		b.notify(Open, HalfOpen)
		return true, true, 0
	default: // HalfOpen: one probe at a time
		if b.probing {
			b.mu.Unlock()
			return false, false, 0
		}
		b.probing = true
		b.mu.Unlock()
		return true, true, 0
	}
}

// Success closes the breaker.
func (b *Breaker) Success() {
	if b.closed.Load() && b.clean.Load() {
		return
	}
	b.mu.Lock()
	from := b.state
	b.setLocked(Closed, 0)
	b.probing, b.lastErr = false, nil
	b.mu.Unlock()
	if from != Closed {
		b.notify(from, Closed)
	}
}

// Failure records a failed request; the threshold-th consecutive failure
// while closed, or a failed probe, opens the breaker for a whole cool-down.
// probe says whether the request was the half-open probe (see Allow). A
// request let through before the circuit opened may fail long after (up
// to its timeout): it adds to the count but neither restarts the cool-down
// nor ends a probe that is out.
func (b *Breaker) Failure(err error, probe bool) {
	b.mu.Lock()
	from := b.state
	to := from
	b.lastErr = err
	switch {
	case probe && from == HalfOpen:
		b.probing = false
		to = Open
		b.openedAt = b.now()
	case from == Closed && b.failures+1 >= b.threshold:
		to = Open
		b.openedAt = b.now()
	}
	b.setLocked(to, b.failures+1)
	b.mu.Unlock()
	if from != to {
		b.notify(from, to)
	}
}

// Release ends a request that brought no verdict on the upstream (the
// client went away). When it was the probe (see Allow), the slot is free
// again for the next request; any other request has nothing to give back.
func (b *Breaker) Release(probe bool) {
	if !probe || b.closed.Load() {
		return
	}
	b.mu.Lock()
	if b.state == HalfOpen {
		b.probing = false
	}
	b.mu.Unlock()
}

// LastErr is the failure behind the current failure streak, nil after a
// success.
func (b *Breaker) LastErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lastErr
}

// BreakerStatus is a snapshot for /health.
type BreakerStatus struct {
	State               string    `json:"state"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	LastError           string    `json:"last_error,omitempty"`
	OpenedAt            time.Time `json:"opened_at,omitzero"`
}

// Status returns the breaker's state for reports.
func (b *Breaker) Status() BreakerStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := BreakerStatus{State: b.state.String(), ConsecutiveFailures: b.failures}
	if b.lastErr != nil {
		s.LastError = b.lastErr.Error()
	}
	if b.state != Closed {
		s.OpenedAt = b.openedAt
	}
	return s
}

// Admits says whether Allow would let a request through now, without
// claiming the probe: the breaker is closed or half-open, or it is open and
// its cool-down is over. An open breaker only becomes half-open inside
// Allow, that is when a request arrives; readiness must not wait for that,
// or a gateway whose every breaker opened would be taken out of its load
// balancer, get no request, and never probe its way back.
func (b *Breaker) Admits() bool {
	if b.closed.Load() {
		// The healthy case, which /ready and /health ask about constantly,
		// takes no lock.
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// Allow lets the probe through once nothing of the cool-down is left;
	// the same comparison here keeps the two from disagreeing at the edge.
	return b.state != Open || b.cooldown-b.now().Sub(b.openedAt) <= 0
}

// State returns the current state.
func (b *Breaker) State() BreakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

func (b *Breaker) notify(from, to BreakerState) {
	if b.OnChange != nil {
		b.OnChange(from, to)
	}
}

// OpenFor says whether the breaker is open with cool-down left, and how
// much: a link whose members are all so is answered 503 with Retry-After.
func (b *Breaker) OpenFor() (open bool, retryIn time.Duration) {
	if b.closed.Load() {
		return false, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != Open {
		return false, 0
	}
	left := b.cooldown - b.now().Sub(b.openedAt)
	return left > 0, max(left, 0)
}
