// Command smoketest verifies a deployed Relaygate stack from its outputs and
// exits non-zero, saying what to do, when any check fails.
//
//	go run ./smoketest/cmd/smoketest -stack dev
//	go run ./smoketest/cmd/smoketest -outputs outputs.json -json report.json
//	go run ./smoketest/cmd/smoketest -stack prod -wait-ready 2m
//
// -wait-ready first waits, up to its limit, for the gateway's /ready to
// answer 200 a few times in a row: right after a deploy the containers were
// replaced, and behind a load balancer the new ones take traffic only once
// their health checks pass. The deploy gate (scripts/deploy.sh) uses it.
// With -stack it reads the outputs through the Pulumi Automation API (the
// pulumi CLI and a backend login are needed); with -outputs it reads a file
// written by `pulumi stack output --json --show-secrets`. Exit status: 0 all
// checks passed, 1 a check failed, 2 the smoke test could not start.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/relaygate/relaygate/smoketest"
	"github.com/relaygate/relaygate/smoketest/internal/pulumistack"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("smoketest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stack := fs.String("stack", "", "stack whose outputs to read through the Automation API (dev, prod, local)")
	outputsFile := fs.String("outputs", "", "read the outputs from this file (`pulumi stack output --json --show-secrets` > FILE) instead of a stack")
	dir := fs.String("C", ".", "directory in the Pulumi project (Pulumi.yaml is looked up from here), for -stack")
	jsonOut := fs.String("json", "", "also write the report as JSON to this file (\"-\": to stdout instead of the table)")
	model := fs.String("model", "", "model to ask (default: the first chat model the gateway lists)")
	requests := fs.Int("requests", smoketest.DefaultRequests, "requests in the latency check")
	concurrency := fs.Int("concurrency", smoketest.DefaultConcurrency, "concurrent requests in the latency check")
	timeout := fs.Duration("timeout", smoketest.DefaultStepTimeout, "time limit of each check (the latency check gets -latency-timeout)")
	latencyTimeout := fs.Duration("latency-timeout", smoketest.DefaultLatencyTimeout, "time limit of the latency check")
	promWait := fs.Duration("prometheus-wait", smoketest.DefaultPrometheusWait, "how long to wait for Prometheus to scrape the gateway")
	waitReady := fs.Duration("wait-ready", 0, "before the checks, wait up to this long for GET /ready to answer 200, for a stack whose containers were just replaced (the deploy gate waits "+smoketest.DefaultDeployWaitReady.String()+"; 0: do not wait)")
	modelServerWait := fs.Duration("model-server-wait", smoketest.DefaultModelServerWait, "how long to wait for the self-hosted model to load and answer")
	ledgerWait := fs.Duration("ledger-wait", smoketest.DefaultLedgerWait, "how long to wait for the completion's row in the usage ledger")
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if (*stack == "") == (*outputsFile == "") || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "smoketest: give exactly one of -stack NAME or -outputs FILE")
		fs.Usage()
		return 2
	}

	if *waitReady < 0 {
		fmt.Fprintf(stderr, "smoketest: -wait-ready %v: give a duration of 0 or more\n", *waitReady)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	outputs, err := loadOutputs(ctx, *stack, *outputsFile, *dir)
	if err != nil {
		fmt.Fprintln(stderr, "smoketest:", err)
		return 2
	}
	opts := smoketest.Options{
		Outputs: outputs, Stack: *stack, Model: *model,
		Requests: *requests, Concurrency: *concurrency,
		StepTimeout: *timeout, LatencyTimeout: *latencyTimeout, PrometheusWait: *promWait,
		WaitReady: *waitReady, ModelServerWait: *modelServerWait, LedgerWait: *ledgerWait, Progress: stderr,
	}
	if *quiet {
		opts.Progress = nil
	}
	rep := smoketest.Run(ctx, opts)

	if *jsonOut == "-" {
		if err := rep.WriteJSON(stdout); err != nil {
			fmt.Fprintln(stderr, "smoketest:", err)
			return 2
		}
	} else {
		if err := rep.WriteTable(stdout); err != nil {
			fmt.Fprintln(stderr, "smoketest:", err)
			return 2
		}
		if *jsonOut != "" {
			if err := writeJSONFile(*jsonOut, rep); err != nil {
				fmt.Fprintln(stderr, "smoketest:", err)
				return 2
			}
		}
	}
	if !rep.Passed {
		return 1
	}
	return 0
}

// stackTimeout bounds reading the outputs: the CLI may have to start a
// plugin or reach a backend, but not forever.
const stackTimeout = 2 * time.Minute

func loadOutputs(ctx context.Context, stack, file, dir string) (smoketest.Outputs, error) {
	if file != "" {
		return smoketest.ReadOutputsFile(file)
	}
	ctx, cancel := context.WithTimeout(ctx, stackTimeout)
	defer cancel()
	proj, err := pulumistack.ProjectDir(dir)
	if err != nil {
		return smoketest.Outputs{}, err
	}
	st, err := pulumistack.Open(ctx, stack, proj)
	if err != nil {
		return smoketest.Outputs{}, err
	}
	raw, err := st.Outputs(ctx)
	if err != nil {
		return smoketest.Outputs{}, err
	}
	if len(raw) == 0 {
		return smoketest.Outputs{}, fmt.Errorf("stack %s has no outputs: deploy it first (`make up STACK=%s`)", stack, stack)
	}
	o, err := smoketest.ParseOutputs(raw)
	if err != nil {
		return smoketest.Outputs{}, fmt.Errorf("stack %s: %w", stack, err)
	}
	return o, nil
}

func writeJSONFile(path string, rep *smoketest.Report) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("json report: %w", err)
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	return rep.WriteJSON(f)
}
