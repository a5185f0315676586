// Command rollback reverts a stack to its last successful update before the
// current one, then smoke-tests it.
//
//	go run ./smoketest/cmd/rollback -stack dev
//
// It reads the stack's update history through the Pulumi Automation API,
// restores the chosen update's configuration (its imageTag among it: the
// image is already in the registry) into Pulumi.<stack>.yaml with
// reuseImage set to true, so that `pulumi up` deploys that image and builds
// nothing, runs `pulumi up`, and runs the smoke test against the result. It refuses,
// changing nothing, when there is nothing to roll back to. Exit status: 0
// rolled back and healthy, 1 refused, failed, or rolled back but the smoke
// test still fails, 2 bad usage.
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

	"github.com/relaygate/relaygate/smoketest"
	"github.com/relaygate/relaygate/smoketest/internal/pulumistack"
	"github.com/relaygate/relaygate/smoketest/internal/rollback"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rollback", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stack := fs.String("stack", "", "stack to roll back (dev, prod, local)")
	dir := fs.String("C", ".", "directory in the Pulumi project (Pulumi.yaml is looked up from here)")
	skipSmoke := fs.Bool("skip-smoke", false, "do not smoke-test the stack after rolling back")
	jsonOut := fs.String("json", "", "write the smoke test's report as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *stack == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "rollback: usage: rollback -stack NAME")
		fs.Usage()
		return 2
	}

	// A rollback interrupted half-way is worse than one that finishes, but
	// Ctrl-C must still work: the context reaches `pulumi up`, which stops
	// cleanly and leaves the stack to be rolled back again.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	proj, err := pulumistack.ProjectDir(*dir)
	if err != nil {
		fmt.Fprintln(stderr, "rollback:", err)
		return 2
	}
	st, err := pulumistack.Open(ctx, *stack, proj)
	if err != nil {
		fmt.Fprintln(stderr, "rollback:", err)
		return 1
	}
	st.Progress = stdout

	plan, err := rollback.Run(ctx, st, stdout)
	switch {
	case errors.Is(err, rollback.ErrNothingToRollBack):
		fmt.Fprintf(stderr, "rollback: refused: %v\n", err)
		return 1
	case err != nil:
		fmt.Fprintf(stderr, "rollback: FAILED: %v\n", err)
		if plan != nil {
			fmt.Fprintf(stderr, "rollback: stack %s may be half-way between updates %d and %d: fix the cause above and run `make rollback STACK=%s` again, "+
				"or `pulumi up` it by hand\n", *stack, plan.Current.Version, plan.Target.Version, *stack)
		}
		return 1
	}
	if *skipSmoke {
		return 0
	}

	raw, err := st.Outputs(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "rollback: rolled back, but the smoke test cannot read the outputs:", err)
		return 1
	}
	outputs, err := smoketest.ParseOutputs(raw)
	if err != nil {
		fmt.Fprintf(stderr, "rollback: rolled back, but the stack's outputs are unusable: %v\n", err)
		return 1
	}
	rep := smoketest.Run(ctx, smoketest.Options{Outputs: outputs, Stack: *stack, Progress: stderr})
	if err := rep.WriteTable(stdout); err != nil {
		fmt.Fprintln(stderr, "rollback:", err)
	}
	if *jsonOut != "" {
		if err := writeJSONFile(*jsonOut, rep); err != nil {
			fmt.Fprintln(stderr, "rollback:", err)
		}
	}
	if !rep.Passed {
		fmt.Fprintf(stderr, "rollback: stack %s is back on update %d's configuration but still fails the smoke test: the fault is not in what the deploy changed; "+
			"see the checks above\n", *stack, plan.Target.Version)
		return 1
	}
	fmt.Fprintf(stdout, "rollback: stack %s rolled back to update %d and passes the smoke test\n", *stack, plan.Target.Version)
	return 0
}

func writeJSONFile(path string, rep *smoketest.Report) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("json report: %w", err)
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	return rep.WriteJSON(f)
}
