package testenv

import (
	"context"
	"testing"
	"time"
)

// Context is a context for a test's calls with guard as its deadline, a
// failure guard rather than an expectation; it is cancelled when the test
// ends.
func Context(t testing.TB, guard time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	t.Cleanup(cancel)
	return ctx
}

// WaitFor polls cond until it holds and fails t if it does not within guard,
// a failure guard rather than an expectation. It is for where no signal
// exists to wait on, such as another component's counters.
func WaitFor(t testing.TB, guard time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s", what, guard)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Receive waits for a value from ch and fails t if none comes within guard,
// a failure guard rather than an expectation; a closed ch gives its zero
// value. It is for where a component signals, where WaitFor would poll.
func Receive[T any](t testing.TB, ch <-chan T, guard time.Duration, what string) T {
	t.Helper()
	timer := time.NewTimer(guard)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("%s: not within %s", what, guard)
		var zero T
		return zero
	}
}

// CloseAtEnd closes ch when the test ends, unless the test has closed it
// already, so handlers blocked on it return. Register it after the server
// whose handlers wait on ch: cleanups run last first, and the server's Close
// waits for its handlers.
func CloseAtEnd(t testing.TB, ch chan struct{}) {
	t.Cleanup(func() {
		select {
		case <-ch:
		default:
			close(ch)
		}
	})
}
