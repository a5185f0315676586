// Package ctxsleep is a sleep that ends early when its context does, for
// the retry back-offs, poll loops and simulated latencies that must not
// outlive the request or run that waits on them.
package ctxsleep

import (
	"context"
	"time"
)

// Sleep waits d, or until ctx is done; it reports whether the full wait
// elapsed. A d of zero or less returns at once, reporting whether ctx is
// still live.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
