package redisguard

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
)

// fakeClock lets the tests move past back-offs and log intervals without
// sleeping.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestGuard(t *testing.T) (*Guard, *fakeClock, *testenv.SyncBuffer) {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	g := New(Options{
		Name:        "cache",
		Timeout:     5 * time.Second,
		MinBackoff:  100 * time.Millisecond,
		MaxBackoff:  400 * time.Millisecond,
		LogInterval: 30 * time.Second,
		Logger:      slog.New(slog.NewTextHandler(logs, nil)),
	})
	clock := &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	g.now = clock.now
	g.since = clock.now()
	return g, clock, logs
}

var errDown = errors.New("dial tcp 127.0.0.1:1: connect: connection refused")

func fail(context.Context) error    { return errDown }
func succeed(context.Context) error { return nil }

func TestGuardBacksOffThenProbes(t *testing.T) {
	g, clock, _ := newTestGuard(t)
	ctx := context.Background()

	if st := g.Status(); !st.Up || st.LastError != "" {
		t.Fatalf("new Guard status = %+v, want up", st)
	}
	if err := g.Do(ctx, fail); !errors.Is(err, errDown) {
		t.Fatalf("first failure: err = %v, want %v", err, errDown)
	}
	st := g.Status()
	if st.Up || !strings.Contains(st.LastError, "connection refused") || !st.Since.Equal(clock.now()) {
		t.Fatalf("status after failure = %+v", st)
	}

	// Each step: how far to move the clock, what the call does, and whether the
	// Guard must send it (false: skipped without calling).
	steps := []struct {
		name     string
		advance  time.Duration
		call     func(context.Context) error
		wantSent bool
	}{
		{"inside first back-off", 50 * time.Millisecond, fail, false},
		{"first back-off over: probe fails", 50 * time.Millisecond, fail, true},
		{"back-off doubled to 200ms", 150 * time.Millisecond, fail, false},
		{"second probe fails", 50 * time.Millisecond, fail, true},
		{"back-off capped at 400ms", 399 * time.Millisecond, fail, false},
		{"third probe fails", time.Millisecond, fail, true},
		{"still capped", 399 * time.Millisecond, fail, false},
		{"probe succeeds", time.Millisecond, succeed, true},
		{"closed again: calls go through", 0, succeed, true},
	}
	for _, s := range steps {
		clock.advance(s.advance)
		sent := false
		err := g.Do(ctx, func(ctx context.Context) error {
			sent = true
			return s.call(ctx)
		})
		if sent != s.wantSent {
			t.Fatalf("%s: sent = %v, want %v (err %v)", s.name, sent, s.wantSent, err)
		}
		if !sent && !errors.Is(err, ErrSkipped) {
			t.Fatalf("%s: skipped call returned %v, want ErrSkipped", s.name, err)
		}
		if !sent && !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("%s: skip error %q does not name the last failure", s.name, err)
		}
	}
	if st := g.Status(); !st.Up || st.LastError != "" || !st.Since.Equal(clock.now()) {
		t.Fatalf("status after recovery = %+v, want up since now", st)
	}
}

func TestGuardLetsOneProbeThrough(t *testing.T) {
	g, clock, _ := newTestGuard(t)
	ctx := context.Background()
	_ = g.Do(ctx, fail)
	clock.advance(time.Second)

	probing := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error)
	go func() {
		done <- g.Do(ctx, func(context.Context) error {
			close(probing)
			<-release
			return nil
		})
	}()
	<-probing
	err := g.Do(ctx, func(context.Context) error {
		t.Error("a second call went to Redis while the probe was in flight")
		return nil
	})
	if !errors.Is(err, ErrSkipped) {
		t.Errorf("call during probe: err = %v, want ErrSkipped", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("probe: %v", err)
	}
	if !g.Status().Up {
		t.Fatal("Guard still down after a successful probe")
	}
}

func TestGuardLateFailuresDoNotStretchBackoff(t *testing.T) {
	g, clock, _ := newTestGuard(t)
	ctx := context.Background()

	// Two calls admitted while closed; both fail after Redis died.
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			_ = g.Do(ctx, func(context.Context) error {
				started <- struct{}{}
				<-release
				return errDown
			})
		})
	}
	<-started
	<-started
	close(release)
	wg.Wait()

	// One outage, so the minimum back-off applies: 100ms.
	clock.advance(100 * time.Millisecond)
	sent := false
	_ = g.Do(ctx, func(context.Context) error { sent = true; return nil })
	if !sent {
		t.Fatal("probe not sent after the first back-off: concurrent failures stretched it")
	}
}

func TestGuardIgnoresCallerCancellation(t *testing.T) {
	g, _, _ := newTestGuard(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := g.Do(ctx, func(ctx context.Context) error { return ctx.Err() })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if !g.Status().Up {
		t.Fatal("a caller's cancellation marked Redis down")
	}
}

func TestGuardTimeout(t *testing.T) {
	g := New(Options{Timeout: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	err := g.Do(context.Background(), func(ctx context.Context) error {
		<-ctx.Done() // a Redis that never answers
		return ctx.Err()
	})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer within 20ms") {
		t.Fatalf("err = %v, want a deadline error naming the timeout", err)
	}
	if g.Status().Up {
		t.Fatal("a timed-out call left the Guard up")
	}
}

func TestGuardLogsOutageOncePerInterval(t *testing.T) {
	g, clock, logs := newTestGuard(t)
	ctx := context.Background()
	const outage = "redis unavailable"

	probeFail := func() {
		clock.advance(time.Second) // past any back-off
		_ = g.Do(ctx, fail)
	}
	probeFail()
	for range 5 {
		probeFail()
	}
	if n := logs.Count(outage); n != 1 {
		t.Fatalf("%d outage lines within one interval, want 1", n)
	}
	clock.advance(30 * time.Second)
	probeFail()
	if n := logs.Count(outage); n != 2 {
		t.Fatalf("%d outage lines after the interval, want 2", n)
	}
	if !strings.Contains(logs.String(), "failures_not_logged=5") {
		t.Errorf("second outage line does not count the failures it summarises:\n%s", logs.String())
	}

	clock.advance(time.Second)
	_ = g.Do(ctx, succeed)
	if n := logs.Count("redis reachable again"); n != 1 {
		t.Fatalf("%d recovery lines, want 1", n)
	}
	// A new outage right after recovery is logged at once.
	_ = g.Do(ctx, fail)
	if n := logs.Count(outage); n != 3 {
		t.Fatalf("%d outage lines after a new outage, want 3", n)
	}
}
