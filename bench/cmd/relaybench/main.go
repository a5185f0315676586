// Command relaybench is Relaygate's benchmark suite (`make bench`): it
// starts the upstream simulator, the gateway with and without its cache, a
// plain Go reverse proxy and nginx on loopback, loads them in interleaved
// rounds and writes a table, report.json and latency.png to -out, judging
// the gateway against the targets of issue 6.
//
//	relaybench -out .bench/
//	relaybench -scenarios streams,idle -rounds 2
//
// Ctrl-C stops the run and every process it started.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/relaygate/relaygate/bench"
)

func main() {
	bench.RunChildIfAsked()

	cfg := bench.DefaultConfig()
	var rates, scenarios string
	flag.StringVar(&cfg.BinDir, "bin", cfg.BinDir, "directory with the gateway and upstream-sim binaries (make build)")
	flag.StringVar(&cfg.OutDir, "out", cfg.OutDir, "directory for report.json, report.txt, latency.png and the profile")
	flag.StringVar(&cfg.WorkDir, "work", "", "keep the children's configs and logs here (default: a temporary directory, removed)")
	flag.StringVar(&cfg.Nginx, "nginx", "", "nginx binary (default: nginx on PATH or /usr/sbin/nginx)")
	flag.BoolVar(&cfg.NoNginx, "no-nginx", false, "leave nginx out")
	flag.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "interleaved rounds per scenario")
	flag.DurationVar(&cfg.Duration, "duration", cfg.Duration, "one subject's run in a round")
	flag.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "unmeasured run of each subject before the first round")
	flag.StringVar(&rates, "rates", joinInts(cfg.Rates), "open-loop rates of non-streamed completions (requests/s)")
	flag.IntVar(&cfg.KeyRate, "key-rate", cfg.KeyRate, "rate the latency targets are judged at; cache and fallback run at it")
	flag.IntVar(&cfg.Workers, "workers", cfg.Workers, "closed-loop (saturation) clients")
	flag.IntVar(&cfg.Tokens, "tokens", cfg.Tokens, "tokens in every answer (stream chunks)")
	flag.IntVar(&cfg.StreamRate, "stream-rate", cfg.StreamRate, "streams opened per second")
	flag.DurationVar(&cfg.ChunkDelay, "chunk-delay", cfg.ChunkDelay, "simulator's pause between stream chunks")
	flag.IntVar(&cfg.IdleStreams, "idle-streams", cfg.IdleStreams, "open streams held for the memory scenario")
	flag.IntVar(&cfg.IdleBatches, "idle-batches", cfg.IdleBatches, "steps the idle streams open in (RSS read after each)")
	flag.BoolVar(&cfg.Profile, "profile", cfg.Profile, "profile the gateway with perf in an extra saturation run")
	flag.StringVar(&scenarios, "scenarios", "", "comma-separated scenarios to run (default all: "+strings.Join(bench.ScenarioNames, ",")+")")
	flag.Parse()

	var err error
	if cfg.Rates, err = parseInts(rates); err != nil {
		fmt.Fprintln(os.Stderr, "relaybench: -rates:", err)
		os.Exit(2)
	}
	if scenarios != "" {
		cfg.Scenarios = strings.Split(scenarios, ",")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, cfg, os.Stderr)
	if rep != nil {
		rep.WriteText(os.Stdout)
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "relaybench: interrupted; every process it started is stopped")
		} else {
			fmt.Fprintln(os.Stderr, "relaybench:", err)
		}
		stop()
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "relaybench: report in %s (report.txt, report.json, latency.png)\n", cfg.OutDir)
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
