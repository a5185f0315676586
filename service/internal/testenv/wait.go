package testenv

import (
	"testing"
	"time"
)

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
