// Command rollback reverts a stack to its last successful update before the
// current one, then smoke-tests it.
//
//	go run ./smoketest/cmd/rollback -stack dev
//	go run ./smoketest/cmd/rollback -stack dev -print-version
//	go run ./smoketest/cmd/rollback -stack dev -after 41
//
// It reads the stack's update history through the Pulumi Automation API,
// restores the chosen update's configuration (its imageTag among it: the
// image is already in the registry) into Pulumi.<stack>.yaml with
// reuseImage set to true, so that `pulumi up` deploys that image and builds
// nothing (a value that is Pulumi.yaml's default stays out of the stack
// file, where the stack file does not set it, so that it stays a default),
// runs `pulumi up`, waits for the gateway's /ready (-wait-ready)
// and runs the smoke test against the result. It refuses, changing nothing,
// when there is nothing to roll back to.
//
// -print-version prints the number of the stack's newest update (0 for a
// stack with none) and changes nothing: a deploy notes it before its `up`.
// On Pulumi Cloud that is the update's version; a self-managed backend
// (`pulumi login --local`, file://, s3://) gives every update version 0, and
// there it is the count of updates in the history, which only grows (the
// rollback names such updates "#N", counted from the oldest, with their
// start time). -after N then rolls back only when the history's newest
// update number is above N; when it is not, the failed `up` never changed
// the stack, which is still on its last good update, and rollback changes
// nothing and exits 3.
//
// Exit status: 0 rolled back and healthy (or, with -print-version, the
// number printed), 1 refused, failed, or rolled back but the smoke test
// still fails, 2 bad usage, 3 with -after: nothing recorded after N,
// nothing rolled back.
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

// Exit statuses besides 0 and 1.
const (
	exitUsage          = 2
	exitNothingApplied = 3
)

// stack is what the command needs of a stack: the rollback's part, the
// newest update's number for -print-version (rollback.LatestNumber) and the
// outputs for the smoke test.
type stack interface {
	rollback.Stack
	LatestNumber(ctx context.Context) (int, error)
	Outputs(ctx context.Context) (map[string]any, error)
}

// openStack selects the stack through the Automation API, `up` progress
// going to progress; tests replace it with recorded history.
var openStack = func(ctx context.Context, name, projectDir string, progress io.Writer) (stack, error) {
	st, err := pulumistack.Open(ctx, name, projectDir)
	if err != nil {
		return nil, err
	}
	st.Progress = progress
	return projectStack{Stack: st, dir: projectDir}, nil
}

// projectStack is a stack of the project in dir, whose Pulumi.yaml and
// stack file tell the rollback which values are defaults.
type projectStack struct {
	*pulumistack.Stack
	dir string
}

func (s projectStack) ConfigFiles(context.Context) (rollback.ConfigFiles, error) {
	return rollback.LoadConfigFiles(s.dir, s.Name())
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rollback", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stackName := fs.String("stack", "", "stack to roll back (dev, prod, local)")
	dir := fs.String("C", ".", "directory in the Pulumi project (Pulumi.yaml is looked up from here)")
	skipSmoke := fs.Bool("skip-smoke", false, "do not smoke-test the stack after rolling back")
	jsonOut := fs.String("json", "", "write the smoke test's report as JSON to this file")
	printVersion := fs.Bool("print-version", false, "print the number of the stack's newest update (0: none; its version, or on a self-managed backend the count of updates) and change nothing")
	after := fs.Int("after", -1, "roll back only if the stack recorded an update after this one (the -print-version from before a failed `up`); otherwise change nothing and exit 3")
	waitReady := fs.Duration("wait-ready", smoketest.DefaultDeployWaitReady, "before the smoke test, wait up to this long for the gateway's /ready to answer 200 (0: do not wait)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	afterSet := false
	fs.Visit(func(f *flag.Flag) { afterSet = afterSet || f.Name == "after" })
	switch {
	case *stackName == "" || fs.NArg() > 0:
		fmt.Fprintln(stderr, "rollback: usage: rollback -stack NAME [-after NUMBER | -print-version]")
		fs.Usage()
		return exitUsage
	case afterSet && *after < 0:
		fmt.Fprintf(stderr, "rollback: -after %d: give what -print-version printed, 0 (no update yet) or more\n", *after)
		return exitUsage
	case afterSet && *printVersion:
		fmt.Fprintln(stderr, "rollback: -print-version changes nothing; it does not go with -after")
		return exitUsage
	case *waitReady < 0:
		fmt.Fprintf(stderr, "rollback: -wait-ready %v: give a duration of 0 or more\n", *waitReady)
		return exitUsage
	}

	// A rollback interrupted half-way is worse than one that finishes, but
	// Ctrl-C must still work: the context reaches `pulumi up`, which stops
	// cleanly and leaves the stack to be rolled back again.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	proj, err := pulumistack.ProjectDir(*dir)
	if err != nil {
		fmt.Fprintln(stderr, "rollback:", err)
		return exitUsage
	}
	st, err := openStack(ctx, *stackName, proj, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "rollback:", err)
		return 1
	}

	if *printVersion {
		v, err := st.LatestNumber(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "rollback: the newest update of stack %s: %v\n", *stackName, err)
			return 1
		}
		fmt.Fprintln(stdout, v)
		return 0
	}

	var plan *rollback.Plan
	if afterSet {
		plan, err = rollback.RunAfter(ctx, st, *after, stdout)
	} else {
		plan, err = rollback.Run(ctx, st, stdout)
	}
	switch {
	case errors.Is(err, rollback.ErrNothingApplied):
		fmt.Fprintf(stderr, "rollback: nothing applied, nothing rolled back: %v\n", err)
		return exitNothingApplied
	case errors.Is(err, rollback.ErrNothingToRollBack):
		fmt.Fprintf(stderr, "rollback: refused: %v\n", err)
		return 1
	case err != nil:
		fmt.Fprintf(stderr, "rollback: FAILED: %v\n", err)
		if plan != nil {
			fmt.Fprintf(stderr, "rollback: stack %s may be half-way between %s and %s: fix the cause above and run `make rollback STACK=%s` again, "+
				"or `pulumi up` it by hand\n", *stackName, plan.Current.Label(), plan.Target.Label(), *stackName)
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
	rep := smoketest.Run(ctx, smoketest.Options{Outputs: outputs, Stack: *stackName, WaitReady: *waitReady, Progress: stderr})
	if err := rep.WriteTable(stdout); err != nil {
		fmt.Fprintln(stderr, "rollback:", err)
	}
	if *jsonOut != "" {
		if err := writeJSONFile(*jsonOut, rep); err != nil {
			fmt.Fprintln(stderr, "rollback:", err)
		}
	}
	if !rep.Passed {
		fmt.Fprintf(stderr, "rollback: stack %s is back on the configuration of %s but still fails the smoke test: the fault is not in what the deploy changed; "+
			"see the checks above\n", *stackName, plan.Target.Label())
		return 1
	}
	fmt.Fprintf(stdout, "rollback: stack %s rolled back to %s and passes the smoke test\n", *stackName, plan.Target.Label())
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
