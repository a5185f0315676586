// Command gpu-probe asks NVML once what the gateway would see and prints the
// snapshot as JSON, so an operator can check a host (driver, device count,
// memory, what NVML refuses) without starting the gateway.
//
//	gpu-probe              # prints the snapshot, exits 0
//	gpu-probe -expect 1    # exits 1 unless at least one GPU answers
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/relaygate/relaygate/service/internal/gpu"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gpu-probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	expect := fs.Int("expect", 0, "exit 1 unless NVML is available and reports at least this many GPUs")
	if err := fs.Parse(args); err != nil {
		return 2
	}

	// The snapshot carries everything the monitor would log; stdout stays
	// clean JSON for jq.
	logger := slog.New(slog.DiscardHandler)
	snap := gpu.NewMonitor(gpu.Options{ExpectedCount: *expect, Logger: logger}).RefreshOnce(ctx)

	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(snap); err != nil {
		fmt.Fprintf(stderr, "gpu-probe: write snapshot: %v\n", err)
		return 1
	}
	if *expect > 0 && (!snap.Available || snap.Count < *expect) {
		fmt.Fprintf(stderr, "gpu-probe: want at least %d GPU(s), NVML reports %d", *expect, snap.Count)
		if snap.Reason != "" {
			fmt.Fprintf(stderr, ": %s", snap.Reason)
		}
		fmt.Fprintln(stderr)
		return 1
	}
	return 0
}
