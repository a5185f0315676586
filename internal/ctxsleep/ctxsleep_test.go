package ctxsleep

import (
	"context"
	"testing"
	"time"
)

func TestSleep(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		d    time.Duration
		want bool
	}{
		{"a short wait elapses", live, time.Millisecond, true},
		{"no wait on a live context", live, 0, true},
		{"a negative wait is none", live, -time.Second, true},
		{"an ended context cuts a long wait short", done, time.Hour, false},
		{"no wait on an ended context", done, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Sleep(tc.ctx, tc.d); got != tc.want {
				t.Errorf("Sleep(%v) = %v, want %v", tc.d, got, tc.want)
			}
		})
	}
}

// TestSleepEndsWithContext: a context cancelled during the wait ends it.
func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(10 * time.Millisecond)
		cancel()
	}()
	if Sleep(ctx, time.Hour) {
		t.Error("Sleep reported an hour elapsed after its context was cancelled")
	}
}
