package rollback

import (
	"context"
	"fmt"
	"io"
)

// Stack is what a rollback needs from a Pulumi stack. The Automation API
// implements it (package pulumistack); tests give it recorded history.
type Stack interface {
	Name() string
	// History returns the update history, newest first, with secret
	// values decrypted.
	History(ctx context.Context) ([]Update, error)
	// Config returns the configuration the stack has now (its
	// Pulumi.<stack>.yaml, which may differ from the last update's).
	Config(ctx context.Context) (map[string]ConfigValue, error)
	// SetConfig writes every value in cfg and removes the keys in remove.
	SetConfig(ctx context.Context, cfg map[string]ConfigValue, remove []string) error
	// Up deploys the stack with the given update message.
	Up(ctx context.Context, message string) error
}

// Run chooses the update to return to, writes its configuration back (with
// reuseImage on, see [Plan.Config]) and runs `up`, telling out what it does.
// It refuses, changing nothing, when there is nothing to roll back to
// (errors.Is(err, ErrNothingToRollBack)).
func Run(ctx context.Context, s Stack, out io.Writer) (*Plan, error) {
	history, err := s.History(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the history of stack %s: %w", s.Name(), err)
	}
	plan, err := Choose(s.Name(), history)
	if err != nil {
		return nil, err
	}
	current, err := s.Config(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the configuration of stack %s: %w", s.Name(), err)
	}
	fmt.Fprint(out, plan.Describe(current))

	var remove []string
	for _, k := range sortedKeys(current) {
		if _, keep := plan.Config[k]; !keep {
			remove = append(remove, k)
		}
	}
	if err := s.SetConfig(ctx, plan.Config, remove); err != nil {
		return plan, fmt.Errorf("restore the configuration of update %d on stack %s: %w", plan.Target.Version, s.Name(), err)
	}
	fmt.Fprintf(out, "rollback: configuration of update %d restored; running `pulumi up` on stack %s\n", plan.Target.Version, s.Name())
	msg := Message(s.Name(), plan.Current.Version, plan.Target.Version)
	if err := s.Up(ctx, msg); err != nil {
		return plan, fmt.Errorf("pulumi up of stack %s with the configuration of update %d: %w", s.Name(), plan.Target.Version, err)
	}
	fmt.Fprintf(out, "rollback: stack %s is back on the configuration of update %d. Pulumi.%s.yaml now holds it: "+
		"commit it, or the next deploy from the branch brings the bad configuration back\n", s.Name(), plan.Target.Version, s.Name())
	return plan, nil
}
