package rollback

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Stack is what a rollback needs from a Pulumi stack. The Automation API
// implements it (package pulumistack); tests give it recorded history.
type Stack interface {
	Name() string
	// History returns the update history, newest first, with secret
	// values decrypted: all of it where the updates have no versions (a
	// self-managed backend), since Choose then numbers them by their place.
	History(ctx context.Context) ([]Update, error)
	// Config returns the configuration the stack has now, as `pulumi
	// config --json` shows it: its Pulumi.<stack>.yaml (which may differ
	// from the last update's) merged over the project's defaults.
	Config(ctx context.Context) (map[string]ConfigValue, error)
	// ConfigFiles tells which keys of that configuration the stack file
	// sets and what the project's defaults are ([LoadConfigFiles]), so
	// that a restored default stays a default.
	ConfigFiles(ctx context.Context) (ConfigFiles, error)
	// SetConfig writes every value in cfg and removes the keys in remove.
	SetConfig(ctx context.Context, cfg map[string]ConfigValue, remove []string) error
	// Up deploys the stack with the given update message.
	Up(ctx context.Context, message string) error
}

// ErrNothingApplied is returned (wrapped) by [RunAfter] when the stack's
// history holds nothing newer than the [LatestNumber] the deploy noted
// before its `up`: the `up` failed before it changed the stack, so there is
// nothing to undo.
var ErrNothingApplied = errors.New("no update was recorded")

// Run chooses the update to return to, writes its configuration back (with
// reuseImage on, see [Plan.Config]) and runs `up`, telling out what it does.
// It refuses, changing nothing, when there is nothing to roll back to
// (errors.Is(err, ErrNothingToRollBack)).
func Run(ctx context.Context, s Stack, out io.Writer) (*Plan, error) {
	return run(ctx, s, -1, out)
}

// RunAfter is Run for a deploy whose `up` or smoke test failed, given
// after, the stack's [LatestNumber] noted before that `up` (on Pulumi Cloud
// the newest version, on a self-managed backend the count of updates). When
// the history holds no operation newer than after, the `up` stopped before
// it recorded an update (the program did not compile, the configuration was
// invalid, the preview failed): the stack is still on its last good update,
// and rolling back would revert that one instead. RunAfter then changes
// nothing and returns an error wrapping ErrNothingApplied.
func RunAfter(ctx context.Context, s Stack, after int, out io.Writer) (*Plan, error) {
	if after < 0 {
		return nil, fmt.Errorf("rollback after update %d: update numbers start at 0 (a stack with no history)", after)
	}
	return run(ctx, s, after, out)
}

// run is Run, and with after >= 0 RunAfter.
func run(ctx context.Context, s Stack, after int, out io.Writer) (*Plan, error) {
	history, err := s.History(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the history of stack %s: %w", s.Name(), err)
	}
	if h := numbered(history); after >= 0 && (len(h) == 0 || h[0].Number <= after) {
		what := "it has none"
		if len(h) > 0 {
			what = "its newest is still " + h[0].Label()
		}
		return nil, fmt.Errorf("%w on stack %s after %s: %s, so the failed `up` stopped before it changed the stack, "+
			"which is still on the update it had; nothing to roll back", ErrNothingApplied, s.Name(), labelOf(h, after), what)
	}
	plan, err := Choose(s.Name(), history)
	if err != nil {
		return nil, err
	}
	current, err := s.Config(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the configuration of stack %s: %w", s.Name(), err)
	}
	files, err := s.ConfigFiles(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the configuration files of stack %s: %w", s.Name(), err)
	}
	keepAccess(plan.Config, current)
	files.Effective(plan.Config, current)
	fmt.Fprint(out, plan.Describe(current))

	// The history holds the merged configuration, defaults included: only
	// what the stack file must hold is written (see ConfigFiles.Split).
	write, remove := files.Split(plan.Config, current)
	if err := s.SetConfig(ctx, write, remove); err != nil {
		return plan, fmt.Errorf("restore the configuration of %s on stack %s: %w", plan.Target.Label(), s.Name(), err)
	}
	fmt.Fprintf(out, "rollback: configuration of %s restored; running `pulumi up` on stack %s\n", plan.Target.Label(), s.Name())
	msg := Message(s.Name(), plan.Current, plan.Target)
	if err := s.Up(ctx, msg); err != nil {
		return plan, fmt.Errorf("pulumi up of stack %s with the configuration of %s: %w", s.Name(), plan.Target.Label(), err)
	}
	fmt.Fprintf(out, "rollback: stack %s is back on the configuration of %s. Pulumi.%s.yaml now holds it: "+
		"commit it, or the next deploy from the branch brings the bad configuration back\n", s.Name(), plan.Target.Label(), s.Name())
	return plan, nil
}
