// Command upstream-sim serves an offline simulation of an OpenAI-compatible
// model API, with latency and faults to dial in. It is the gateway's upstream
// in `make demo` (when no provider key is set), in tests and in benchmarks.
// Its answers are synthetic words, not model output.
//
//	upstream-sim -listen 127.0.0.1:9001 -latency 40ms -failure-rate 0.05 -failure-statuses 503,429
//
// GET /sim/stats shows what it served and injected; POST /sim/reset zeroes
// the counters. With -vllm it acts as a vLLM server (/health, /metrics with
// vLLM's names, -load-time, POST /sim/state?set=loading|ready|dead). SIGINT or SIGTERM stops it: requests in flight get a short
// grace, then hung and delayed ones are released.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/relaygate/relaygate/service/internal/commalist"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

const (
	envAPIKey = "UPSTREAM_SIM_API_KEY"
	// shutdownGrace is how long requests in flight may finish after a
	// signal; hangs never do, so after it they are released.
	shutdownGrace = 5 * time.Second
	banner        = "upstream-sim: OFFLINE SIMULATOR of an OpenAI-compatible API: " +
		"answers are synthetic, faults are injected on purpose; not a model provider"
)

func main() {
	opts, err := parseFlags(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream-sim:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, log, os.Stderr); err != nil {
		log.Error("upstream-sim stopped", "error", err.Error())
		stop()
		os.Exit(1)
	}
}

type options struct {
	listen string
	cfg    upstreamsim.Config
}

// parseFlags reads the command line into a simulator Config. Rates and
// statuses out of range are errors here rather than silently clamped: a
// typo in a demo or benchmark script should stop it, not change what it
// measures.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	var (
		o        options
		c        = &o.cfg
		statuses string
		models   string
		apiKey   string
	)
	fs := flag.NewFlagSet("upstream-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:9001", "address to listen on")
	fs.StringVar(&models, "models", "", "comma-separated model ids to list and accept (empty: accept any model)")
	fs.StringVar(&apiKey, "api-key", "", "Bearer key clients must send (default $"+envAPIKey+"; empty: no key needed)")
	fs.Int64Var(&c.Seed, "seed", 0, "seed of the fault and jitter draws")
	fs.DurationVar(&c.Latency, "latency", 0, "wait before the first byte of each answer")
	fs.DurationVar(&c.Jitter, "jitter", 0, "extra uniform random wait in [0, jitter] on top of -latency")
	fs.DurationVar(&c.ChunkDelay, "chunk-delay", 0, "wait between streamed chunks")
	fs.IntVar(&c.CompletionTokens, "completion-tokens", upstreamsim.DefaultCompletionTokens, "answer length in tokens (a smaller max_tokens wins)")
	fs.IntVar(&c.TokensPerChunk, "tokens-per-chunk", upstreamsim.DefaultTokensPerChunk, "tokens in each streamed chunk")
	fs.IntVar(&c.EmbeddingDims, "embedding-dims", upstreamsim.DefaultEmbeddingDims, "length of embedding vectors")
	fs.Float64Var(&c.FailureRate, "failure-rate", 0, "share of requests answered with an error status, 0 to 1")
	fs.StringVar(&statuses, "failure-statuses", strconv.Itoa(upstreamsim.DefaultFailureStatus), "comma-separated statuses drawn for failures")
	fs.DurationVar(&c.RetryAfter, "retry-after", 0, "Retry-After sent with an injected 429 (0: none)")
	fs.Float64Var(&c.HangRate, "hang-rate", 0, "share of requests never answered until the client leaves, 0 to 1")
	fs.Float64Var(&c.ResetRate, "reset-rate", 0, "share of requests whose connection is reset without an answer, 0 to 1")
	fs.Float64Var(&c.CutRate, "cut-rate", 0, "share of streams dropped before [DONE], 0 to 1")
	fs.Float64Var(&c.ErrorAfterStartRate, "error-after-start-rate", 0, "share of Messages streams that send an error event right after message_start, 0 to 1")
	fs.IntVar(&c.CutAfterChunks, "cut-after", 0, "events sent before a cut stream is dropped (0: right after the headers)")
	fs.IntVar(&c.ReasoningTokens, "reasoning-tokens", 0, "reasoning tokens each Responses answer reports (within output_tokens)")
	fs.Float64Var(&c.FailAfterCreatedRate, "fail-after-created-rate", 0, "share of Responses streams failed with response.failed right after response.created, 0 to 1")
	fs.BoolVar(&c.VLLM, "vllm", false, "act as a vLLM server: GET /health (503 while loading), GET /metrics with vLLM's metric names, POST /sim/state?set=loading|ready|dead")
	fs.DurationVar(&c.LoadTime, "load-time", 0, "with -vllm: how long /health answers 503 after start, as while loading weights")
	fs.IntVar(&c.MaxRunning, "max-running", 0, "with -vllm: chat requests running at once (max_num_seqs); more wait (0: no bound)")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}

	if apiKey == "" {
		apiKey = getenv(envAPIKey)
	}
	c.APIKey = apiKey
	c.Models = commalist.Split(models)
	for _, s := range commalist.Split(statuses) {
		code, err := strconv.Atoi(s)
		if err != nil || code < 400 || code > 599 {
			return options{}, fmt.Errorf("-failure-statuses: %q is not an HTTP error status (400-599)", s)
		}
		c.FailureStatuses = append(c.FailureStatuses, code)
	}
	for _, r := range []struct {
		name string
		v    float64
	}{{"failure-rate", c.FailureRate}, {"hang-rate", c.HangRate}, {"reset-rate", c.ResetRate}, {"cut-rate", c.CutRate},
		{"error-after-start-rate", c.ErrorAfterStartRate},
		{"fail-after-created-rate", c.FailAfterCreatedRate}} {
		if !(r.v >= 0 && r.v <= 1) {
			return options{}, fmt.Errorf("-%s: %v is not a rate between 0 and 1", r.name, r.v)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"latency", c.Latency}, {"jitter", c.Jitter}, {"chunk-delay", c.ChunkDelay}, {"retry-after", c.RetryAfter}, {"load-time", c.LoadTime}} {
		if d.v < 0 {
			return options{}, fmt.Errorf("-%s: %v is negative", d.name, d.v)
		}
	}
	for _, n := range []struct {
		name string
		v    int
		min  int
	}{
		{"completion-tokens", c.CompletionTokens, 1}, {"tokens-per-chunk", c.TokensPerChunk, 1},
		{"embedding-dims", c.EmbeddingDims, 1}, {"cut-after", c.CutAfterChunks, 0}, {"reasoning-tokens", c.ReasoningTokens, 0},
		{"max-running", c.MaxRunning, 0},
	} {
		if n.v < n.min {
			return options{}, fmt.Errorf("-%s: %d is below %d", n.name, n.v, n.min)
		}
	}
	if !c.VLLM && (c.LoadTime > 0 || c.MaxRunning > 0) {
		return options{}, errors.New("-load-time and -max-running simulate vLLM: add -vllm")
	}
	return o, nil
}

// run serves until ctx is done, then shuts down.
func run(ctx context.Context, opts options, log *slog.Logger, stderr io.Writer) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", opts.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", opts.listen, err)
	}
	fmt.Fprintln(stderr, banner)
	c := opts.cfg
	// The key itself is never logged, only whether one is required.
	log.Info("upstream simulator listening", "addr", ln.Addr().String(),
		"models", c.Models, "api_key_required", c.APIKey != "", "seed", c.Seed,
		"latency", c.Latency.String(), "jitter", c.Jitter.String(), "chunk_delay", c.ChunkDelay.String(),
		"completion_tokens", c.CompletionTokens, "tokens_per_chunk", c.TokensPerChunk,
		"failure_rate", c.FailureRate, "failure_statuses", c.FailureStatuses, "retry_after", c.RetryAfter.String(),
		"hang_rate", c.HangRate, "reset_rate", c.ResetRate, "cut_rate", c.CutRate, "cut_after", c.CutAfterChunks)
	return serve(ctx, ln, upstreamsim.New(c), log, shutdownGrace)
}

// serve runs an HTTP server on ln until ctx is done. Requests in flight then
// get grace to finish; after it, the base context every request derives from
// is cancelled, which ends hangs and delays at once, and connections close.
func serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger, grace time.Duration) error {
	base, release := context.WithCancel(context.WithoutCancel(ctx))
	defer release()
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", grace.String())
	shutdownCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(shutdownCtx)
	if err != nil {
		release()
		_ = srv.Close()
		log.Warn("requests still in flight after the grace were cut", "error", err.Error())
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	log.Info("shutdown complete")
	return nil
}
