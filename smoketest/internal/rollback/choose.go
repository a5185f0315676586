package rollback

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// ErrNothingToRollBack is returned (wrapped, with the reason) when the
// history holds no update to go back to.
var ErrNothingToRollBack = errors.New("nothing to roll back to")

// Plan is a chosen rollback: from the stack's current update to an
// earlier successful one.
type Plan struct {
	Stack   string
	Current Update
	Target  Update
	// Config is the configuration the rollback restores: Target's
	// configuration with reuseImage on, so that `up` builds nothing. Like
	// the history, it is the merged configuration, the project's defaults
	// included; Run writes into the stack file only what it must hold
	// (ConfigFiles.Split).
	Config map[string]ConfigValue
	// Skipped explains each newer successful update passed over.
	Skipped []string
}

// Choose picks the update to roll back to from a stack's history:
//
//   - the current update is the newest one of kind "update", whatever its
//     result; a stack whose newest operation is a destroy, or whose update
//     is still running, is refused;
//   - the target is the newest older update that succeeded, passing over
//     the ones known to be bad: the one a later rollback reverted (its
//     message says so), so that rolling back twice goes further back
//     instead of returning to the bad deploy;
//   - a rollback that was reverted in turn marks the update it restored
//     as bad as well, so that a third rollback does not return to the
//     configuration the second one took away;
//   - when the current update succeeded and is a rollback, the update whose
//     configuration it restored is passed over too: restoring it again
//     would change nothing;
//   - when the current update succeeded and the update it would go back to
//     has the very same configuration, what the current update changed is
//     code, not configuration (the Pulumi program, or an image rebuilt under
//     the same tag), or nothing at all. A rollback restores configuration
//     and always runs the current checkout's program, so it cannot undo
//     that, and going on to an older configuration would move the stack
//     two deploys back while still running the new code: Choose refuses
//     (ErrNothingToRollBack), saying to revert the commit and deploy again.
//     After a failed update an identical configuration is kept, since `up`
//     with the last good configuration repairs a half-applied stack.
func Choose(stack string, history []Update) (*Plan, error) {
	h := numbered(history)
	var current *Update
	for i := range h {
		switch h[i].Kind {
		case KindDestroy:
			if current == nil {
				return nil, fmt.Errorf("%w: stack %s was destroyed in %s; deploy it with `make up STACK=%s`",
					ErrNothingToRollBack, stack, h[i].Label(), stack)
			}
		case KindUpdate:
			if current == nil {
				current = &h[i]
			}
		}
		if current != nil {
			break
		}
	}
	if current == nil {
		return nil, fmt.Errorf("%w: stack %s has never been updated", ErrNothingToRollBack, stack)
	}
	if current.Result == ResultInProgress {
		return nil, fmt.Errorf("%s of stack %s is still running: wait for it (or, if it died, `pulumi cancel` and `pulumi refresh`), then roll back",
			current.Label(), stack)
	}

	// bad holds, by Number, the updates not to return to and why.
	bad := map[int]string{current.Number: "the current update"}
	if from, _, ok := current.rollback(); ok {
		bad[from] = "reverted by the rollback in " + current.Label()
	}
	plan := &Plan{Stack: stack, Current: *current}
	var older []string
	for _, u := range h {
		if u.Number >= current.Number || u.Kind != KindUpdate {
			continue
		}
		if from, to, ok := u.rollback(); ok {
			if _, seen := bad[from]; !seen {
				bad[from] = "reverted by the rollback in " + u.Label()
			}
			// A rollback that was itself reverted condemns the
			// configuration it restored, too: a third rollback must not
			// bring back what the second took away.
			if why, reverted := bad[u.Number]; reverted && u.Result == ResultSucceeded {
				if _, seen := bad[to]; !seen {
					bad[to] = fmt.Sprintf("restored by %s, which was %s", u.Label(), why)
				}
			}
		}
		older = append(older, u.short()+" "+orUnknown(u.Result))
		if u.Result != ResultSucceeded {
			continue
		}
		if why, isBad := bad[u.Number]; isBad {
			plan.Skipped = append(plan.Skipped, u.short()+": "+why)
			continue
		}
		if current.Result == ResultSucceeded && sameConfig(u.Config, current.Config) {
			if _, to, ok := current.rollback(); ok && to == u.Number {
				plan.Skipped = append(plan.Skipped, u.short()+": same configuration as the current update")
				continue
			}
			return nil, codeOnly(stack, h, *current, u)
		}
		plan.Target = u
		plan.Config = restored(u.Config)
		if err := plan.restorable(); err != nil {
			return nil, err
		}
		return plan, nil
	}
	if len(older) == 0 {
		return nil, fmt.Errorf("%w: %s is the first update of stack %s", ErrNothingToRollBack, current.Label(), stack)
	}
	why := fmt.Sprintf("stack %s has no successful update before %s to go back to (older: %s)",
		stack, current.Label(), strings.Join(older, ", "))
	if len(plan.Skipped) > 0 {
		why += "; passed over: " + strings.Join(plan.Skipped, "; ")
	}
	return nil, fmt.Errorf("%w: %s", ErrNothingToRollBack, why)
}

// codeOnly is the refusal for a successful current update whose
// configuration equals that of target, the update a rollback would return
// to; h is the numbered history.
func codeOnly(stack string, h []Update, current, target Update) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s of stack %s", current.Label(), stack)
	if _, to, ok := current.rollback(); ok {
		fmt.Fprintf(&b, " (a rollback to %s)", labelOf(h, to))
	}
	fmt.Fprintf(&b, " has the same configuration as %s before it", target.Label())
	if tag, ok := current.Config[imageTagKey]; ok && tag.Value != nil && !tag.Secret {
		fmt.Fprintf(&b, " (image tag %q)", *tag.Value)
	}
	was, now := shortCommit(target.gitHead()), shortCommit(current.gitHead())
	switch {
	case was != "" && now != "" && was != now:
		fmt.Fprintf(&b, "; it ran commit %s where update %s ran %s", now, number(target), was)
	case was != "" && was == now:
		fmt.Fprintf(&b, "; both ran commit %s", now)
	}
	fmt.Fprintf(&b, ": what it changed is code, not configuration (the Pulumi program, or an image rebuilt under the same tag), "+
		"if anything. A rollback restores an older configuration and still runs this checkout's program, so it cannot undo that, "+
		"and restoring a configuration older than update %s would move the stack two deploys back while running the new code. "+
		"Revert the commit and deploy again (`make deploy STACK=%s`)", number(target), stack)
	return fmt.Errorf("%w: %s", ErrNothingToRollBack, b.String())
}

// labelOf is the Label of the update numbered n in the numbered history h.
func labelOf(h []Update, n int) string {
	for _, u := range h {
		if u.Number == n {
			return u.Label()
		}
	}
	if len(h) > 0 && h[0].Version == 0 {
		return fmt.Sprintf("update #%d", n)
	}
	return fmt.Sprintf("update %d", n)
}

func shortCommit(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}

// restorable checks that every value of the target can be written back:
// secrets must have been decrypted when the history was read.
func (p *Plan) restorable() error {
	var missing []string
	for _, k := range slices.Sorted(maps.Keys(p.Target.Config)) {
		v := p.Target.Config[k]
		if v.Value == nil || *v.Value == undecryptable {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("in %s, the values of %s could not be decrypted: read the history with the stack's secrets provider "+
			"(PULUMI_CONFIG_PASSPHRASE, or log in to the backend that holds the stack)", p.Target.Label(), strings.Join(missing, ", "))
	}
	return nil
}

// Change is one configuration key that differs between the current update
// and the target.
type Change struct {
	Key string
	// From and To are shown to the operator: values of short plaintext
	// keys, "(secret)" or "(changed)" otherwise; empty when absent.
	From, To string
}

// Changes lists what writing p.Config changes relative to current, the
// configuration the stack has now. Secret values are never shown.
func (p *Plan) Changes(current map[string]ConfigValue) []Change {
	var out []Change
	keys := map[string]bool{}
	for k := range current {
		keys[k] = true
	}
	for k := range p.Config {
		keys[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		a, inA := current[k]
		b, inB := p.Config[k]
		if inA && inB && a.Secret == b.Secret && a.text() == b.text() {
			continue
		}
		c := Change{Key: k}
		if inA {
			c.From = shown(a)
		}
		if inB {
			c.To = shown(b)
		}
		if inA && inB && c.From == c.To {
			c.From, c.To = "(changed)", "(changed)"
			if a.Secret || b.Secret {
				c.From, c.To = "(secret)", "(secret, changed)"
			}
		}
		out = append(out, c)
	}
	return out
}

// Describe is the plan in a few lines for the operator.
func (p *Plan) Describe(current map[string]ConfigValue) string {
	var b strings.Builder
	fmt.Fprintf(&b, "rollback of stack %s: from update %s (%s, %s) to update %s (%s, %s)\n",
		p.Stack, number(p.Current), orUnknown(p.Current.Result), p.Current.StartTime,
		number(p.Target), p.Target.Result, p.Target.StartTime)
	if msg := p.Target.message(); msg != "" {
		fmt.Fprintf(&b, "  update %s was: %s\n", number(p.Target), oneLine(msg))
	}
	for _, s := range p.Skipped {
		fmt.Fprintf(&b, "  passed over %s\n", s)
	}
	if tag, ok := p.Config[imageTagKey]; ok && tag.Value != nil && !tag.Secret {
		fmt.Fprintf(&b, "  image: tag %q as the registry holds it (reuseImage); nothing is built\n", *tag.Value)
	}
	changes := p.Changes(current)
	if len(changes) == 0 {
		b.WriteString("  configuration: already as in the target update; `up` re-applies it\n")
	}
	for _, c := range changes {
		switch {
		case c.From == "":
			fmt.Fprintf(&b, "  config %s: set to %s\n", c.Key, c.To)
		case c.To == "":
			fmt.Fprintf(&b, "  config %s: removed (was %s)\n", c.Key, c.From)
		default:
			fmt.Fprintf(&b, "  config %s: %s -> %s\n", c.Key, c.From, c.To)
		}
	}
	return b.String()
}

func shown(v ConfigValue) string {
	switch {
	case v.Secret:
		return "(secret)"
	case v.Value == nil:
		return "(unknown)"
	case v.ObjectValue != nil || len(*v.Value) > 60 || strings.ContainsAny(*v.Value, "\n\r"):
		return "(structured value)"
	default:
		return fmt.Sprintf("%q", *v.Value)
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown result"
	}
	return s
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
