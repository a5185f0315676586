package redisguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrSkipped is returned, wrapped with the last failure, for calls the Guard
// did not send because Redis failed recently and its back-off has not ended.
var ErrSkipped = errors.New("redis skipped while backing off after a failure")

// Defaults for the back-off and the outage log. The first retry comes soon, so
// a blip costs little; doubling to a few seconds keeps a dead Redis from
// costing every request a timeout, while bounding how long the gateway goes
// on without Redis after it is back.
const (
	DefaultMinBackoff  = 250 * time.Millisecond
	DefaultMaxBackoff  = 5 * time.Second
	DefaultLogInterval = 30 * time.Second
)

// Status is what /health shows about one Redis dependency.
type Status struct {
	// Up is false from a failed call until a call succeeds again. Before the
	// first call nothing has failed, so it is true.
	Up bool `json:"up"`
	// LastError is the cause of the current outage, empty while up.
	LastError string `json:"last_error,omitempty"`
	// Since is when Up last changed (or when the Guard was made).
	Since time.Time `json:"since"`
}

// Options configures a Guard. Zero values take the defaults above.
type Options struct {
	// Name identifies the dependency in logs and errors, e.g. "cache".
	Name string
	// Timeout bounds each call; DefaultTimeout when zero.
	Timeout     time.Duration
	MinBackoff  time.Duration
	MaxBackoff  time.Duration
	LogInterval time.Duration
	// Logger receives the outage and recovery lines; slog.Default when nil.
	Logger *slog.Logger
}

// Guard runs calls to one Redis under a timeout and a back-off. It behaves
// like a circuit breaker: closed while calls succeed; open after a failure,
// answering ErrSkipped with no network call until the back-off ends; then
// half-open, letting exactly one probe through while other calls keep being
// skipped, so a recovering Redis is not met by a thundering herd.
// A Guard is safe for concurrent use.
type Guard struct {
	name        string
	timeout     time.Duration
	minBackoff  time.Duration
	maxBackoff  time.Duration
	logInterval time.Duration
	logger      *slog.Logger
	now         func() time.Time

	mu        sync.Mutex
	up        bool
	lastErr   string
	since     time.Time
	failures  int       // consecutive failed probes, for the back-off
	retryAt   time.Time // while down: when the next probe may go
	probing   bool      // while down: a probe is in flight
	lastLog   time.Time // when the last outage line was written
	unlogged  int       // failures since that line
	downSince time.Time
	// lastRefusal is when the last error reply of Redis's own was logged.
	lastRefusal time.Time
}

// New returns a Guard that starts closed.
func New(opts Options) *Guard {
	g := &Guard{
		name:        opts.Name,
		timeout:     opts.Timeout,
		minBackoff:  opts.MinBackoff,
		maxBackoff:  opts.MaxBackoff,
		logInterval: opts.LogInterval,
		logger:      opts.Logger,
		now:         time.Now,
		up:          true,
	}
	if g.name == "" {
		g.name = "redis"
	}
	if g.timeout <= 0 {
		g.timeout = DefaultTimeout
	}
	if g.minBackoff <= 0 {
		g.minBackoff = DefaultMinBackoff
	}
	if g.maxBackoff < g.minBackoff {
		g.maxBackoff = max(DefaultMaxBackoff, g.minBackoff)
	}
	if g.logInterval <= 0 {
		g.logInterval = DefaultLogInterval
	}
	if g.logger == nil {
		g.logger = slog.Default()
	}
	g.since = g.now()
	return g
}

// Timeout is the bound each call runs under.
func (g *Guard) Timeout() time.Duration { return g.timeout }

// Do runs call with a context that expires after the Guard's timeout, unless
// Redis is being backed off from, in which case it returns an error wrapping
// ErrSkipped at once. call must return nil for answers that are not failures
// of Redis (a missing key included). A call that fails because ctx itself was
// cancelled says nothing about Redis and does not open the Guard.
func (g *Guard) Do(ctx context.Context, call func(ctx context.Context) error) error {
	probe, err := g.admit()
	if err != nil {
		return err
	}
	callCtx, cancel := context.WithTimeout(ctx, g.timeout)
	err = call(callCtx)
	timedOut := callCtx.Err() != nil
	cancel()

	var reply redis.Error
	switch {
	case err == nil:
		g.succeeded()
		return nil
	case ctx.Err() != nil:
		// The caller gave up (client went away, shutdown); Redis may be fine.
		g.abandoned(probe)
		return err
	case !timedOut && errors.As(err, &reply):
		// Redis answered, with an error of its own: OOM when it is full
		// under noeviction, READONLY on a replica. It is up, and reads
		// still work, so the Guard stays closed (opening it would stop
		// every cache read to spare failing writes); the refusal is
		// logged once per interval.
		g.succeeded()
		g.refused(err)
		return err
	}
	if timedOut {
		err = fmt.Errorf("no answer within %s: %w", g.timeout, err)
	}
	g.failed(probe, err)
	return err
}

// Status reports the state seen by the most recent calls.
func (g *Guard) Status() Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	return Status{Up: g.up, LastError: g.lastErr, Since: g.since}
}

// admit decides whether a call may go to Redis, and whether it is the probe.
func (g *Guard) admit() (probe bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.up {
		return false, nil
	}
	if g.probing || g.now().Before(g.retryAt) {
		return false, fmt.Errorf("%s: %w (last error: %s)", g.name, ErrSkipped, g.lastErr)
	}
	g.probing = true
	return true, nil
}

func (g *Guard) succeeded() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.probing = false
	if g.up {
		return
	}
	now := g.now()
	g.logger.Info("redis reachable again", "component", g.name,
		"down_for", now.Sub(g.downSince).Round(time.Millisecond).String(),
		"failures_not_logged", g.unlogged)
	g.up = true
	g.lastErr = ""
	g.since = now
	g.failures = 0
	g.unlogged = 0
	// Log the next outage at once, however soon it comes.
	g.lastLog = time.Time{}
}

func (g *Guard) refused(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	if !g.lastRefusal.IsZero() && now.Sub(g.lastRefusal) < g.logInterval {
		return
	}
	g.lastRefusal = now
	g.logger.Warn("redis refused a command", "component", g.name, "err", err.Error())
}

func (g *Guard) abandoned(probe bool) {
	if !probe {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.probing = false // the next call probes instead
}

func (g *Guard) failed(probe bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	switch {
	case g.up:
		// The first failure opens the Guard; calls already in flight that
		// fail next must not stretch the back-off, hence the probe check below.
		g.up = false
		g.since = now
		g.downSince = now
		g.failures = 1
	case probe:
		g.probing = false
		g.failures++
	default:
		// A call admitted before the Guard opened, failing late: same outage.
		g.unlogged++
		return
	}
	backoff := g.backoff()
	g.retryAt = now.Add(backoff)
	g.lastErr = err.Error()

	if !g.lastLog.IsZero() && now.Sub(g.lastLog) < g.logInterval {
		g.unlogged++
		return
	}
	g.logger.Warn("redis unavailable; skipping it until a probe succeeds",
		"component", g.name, "err", err.Error(),
		"next_probe_in", backoff.String(),
		"failures_not_logged", g.unlogged)
	g.lastLog = now
	g.unlogged = 0
}

// backoff doubles from minBackoff per consecutive failed probe, up to maxBackoff.
func (g *Guard) backoff() time.Duration {
	d := g.minBackoff
	for i := 1; i < g.failures && d < g.maxBackoff; i++ {
		d *= 2
	}
	return min(d, g.maxBackoff)
}
