//go:build !cgo

package gpu

import (
	"context"
	"log/slog"
	"testing"
)

func TestBuiltWithoutCgo(t *testing.T) {
	snap := NewMonitor(Options{Logger: slog.New(slog.DiscardHandler)}).RefreshOnce(context.Background())
	if snap.Available || snap.Reason != "built without cgo" {
		t.Fatalf("snapshot = %+v, want unavailable, built without cgo", snap)
	}
}
