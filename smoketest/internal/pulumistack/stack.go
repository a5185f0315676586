// Package pulumistack opens a stack of this repository's Pulumi project
// through the Automation API, for the smoke test (its outputs) and the
// rollback (its history, configuration and `up`).
package pulumistack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/auto"
	"github.com/pulumi/pulumi/sdk/v3/go/auto/optup"

	"github.com/relaygate/relaygate/smoketest/internal/rollback"
)

// historyPageSize and historyMaxPages bound how much history a rollback
// reads from a backend that numbers its updates (Pulumi Cloud): the CLI's
// default page is only 10 updates, which a run of failed deploys can fill.
// A self-managed backend's history, whose updates all have version 0, is
// read to its end: its updates are numbered by their place in it, counted
// from the oldest (rollback.Update.Number).
const (
	historyPageSize = 100
	historyMaxPages = 5
)

// Stack is one selected stack.
type Stack struct {
	stack auto.Stack
	// Progress receives `up`'s output as it runs.
	Progress io.Writer
}

// ProjectDir finds the Pulumi project from dir upwards: the directory with
// Pulumi.yaml, so the commands work from anywhere in the checkout.
func ProjectDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := abs; ; {
		if _, err := os.Stat(filepath.Join(d, "Pulumi.yaml")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no Pulumi.yaml in %s or above: run from the repository or pass -C", abs)
		}
		d = parent
	}
}

// Open selects an existing stack of the project in dir. It needs the
// pulumi CLI and a login to the stack's backend, as `pulumi` itself does.
func Open(ctx context.Context, name, dir string) (*Stack, error) {
	st, err := auto.SelectStackLocalSource(ctx, name, dir)
	if err != nil {
		return nil, fmt.Errorf("select stack %s in %s (needs the pulumi CLI and `pulumi login`): %w", name, dir, err)
	}
	return &Stack{stack: st, Progress: io.Discard}, nil
}

// Name is the stack's name.
func (s *Stack) Name() string { return s.stack.Name() }

// Outputs returns the stack's outputs with secrets in plaintext, as plain
// JSON values (strings, float64, []any), the input of smoketest.ParseOutputs.
func (s *Stack) Outputs(ctx context.Context) (map[string]any, error) {
	out, err := s.stack.Outputs(ctx)
	if err != nil {
		return nil, fmt.Errorf("outputs of stack %s: %w", s.Name(), err)
	}
	raw := make(map[string]any, len(out))
	for k, v := range out {
		raw[k] = v.Value
	}
	return raw, nil
}

// History reads `pulumi stack history --json --show-secrets` through the
// workspace's CLI. auto.Stack.History would parse it into UpdateSummary,
// which drops the objectValue of structured config that restoring needs.
func (s *Stack) History(ctx context.Context) ([]rollback.Update, error) {
	return s.history(ctx, true)
}

// history reads the stack's history page by page, newest first: up to
// historyMaxPages where updates have versions, all of it where they have
// none (a self-managed backend), since there an update's number is its
// place counted from the oldest.
func (s *Stack) history(ctx context.Context, showSecrets bool) ([]rollback.Update, error) {
	var all []rollback.Update
	for page := 1; ; page++ {
		h, err := s.historyPage(ctx, historyPageSize, page, showSecrets)
		if err != nil {
			return nil, err
		}
		all = append(all, h...)
		versioned := slices.ContainsFunc(all, func(u rollback.Update) bool { return u.Version != 0 })
		if len(h) < historyPageSize || (versioned && page >= historyMaxPages) {
			return all, nil
		}
	}
}

func (s *Stack) historyPage(ctx context.Context, size, page int, showSecrets bool) ([]rollback.Update, error) {
	args := []string{"stack", "history", "--json", "--page-size", strconv.Itoa(size), "--page", strconv.Itoa(page)}
	if showSecrets {
		args = append(args, "--show-secrets")
	}
	stdout, err := s.run(ctx, args...)
	if err != nil {
		return nil, err
	}
	h, err := rollback.ParseHistory([]byte(stdout))
	if err != nil {
		return nil, fmt.Errorf("page %d of the history of stack %s: %w", page, s.Name(), err)
	}
	return h, nil
}

// LatestNumber is rollback.LatestNumber of the stack's history, 0 when it
// has none: what a deploy notes before its `up` (rollback.RunAfter). It
// decrypts nothing. Where updates have versions it reads one entry, the
// newest; on a self-managed backend (version 0) it counts the whole
// history.
func (s *Stack) LatestNumber(ctx context.Context) (int, error) {
	newest, err := s.historyPage(ctx, 1, 1, false)
	if err != nil {
		return 0, err
	}
	if len(newest) == 0 || newest[0].Version != 0 {
		return rollback.LatestNumber(newest), nil
	}
	all, err := s.history(ctx, false)
	if err != nil {
		return 0, err
	}
	return rollback.LatestNumber(all), nil
}

// Config returns the stack's configuration as its stack file has it now,
// secrets decrypted, in the shape of `pulumi config --json`.
func (s *Stack) Config(ctx context.Context) (map[string]rollback.ConfigValue, error) {
	stdout, err := s.run(ctx, "config", "--json", "--show-secrets")
	if err != nil {
		return nil, err
	}
	var cfg map[string]rollback.ConfigValue
	if err := json.Unmarshal([]byte(stdout), &cfg); err != nil {
		return nil, fmt.Errorf("parse `pulumi config --json`: %w", err)
	}
	return cfg, nil
}

// SetConfig writes cfg and then removes the keys in remove. Plain values go
// in one `config set-all --json`, which takes the history's value objects
// as they are (structured values stay structured). Each secret goes through
// `config set --secret KEY` on stdin instead: a decrypted secret on a
// command line is readable by every user of the machine (ps,
// /proc/PID/cmdline) and lands in CI logs that echo commands. A structured
// secret, which this project's schema has none of, can only go through
// set-all.
func (s *Stack) SetConfig(ctx context.Context, cfg map[string]rollback.ConfigValue, remove []string) error {
	plain := make(map[string]rollback.ConfigValue, len(cfg))
	var secrets []string
	for k, v := range cfg {
		if v.Secret && v.ObjectValue == nil {
			secrets = append(secrets, k)
			continue
		}
		plain[k] = v
	}
	if len(plain) > 0 {
		b, err := json.Marshal(plain)
		if err != nil {
			return fmt.Errorf("encode config: %w", err)
		}
		if err := s.stack.SetAllConfigJson(ctx, string(b), nil); err != nil {
			return fmt.Errorf("pulumi config set-all: %w", scrub(err, plain))
		}
	}
	slices.Sort(secrets)
	for _, k := range secrets {
		v := cfg[k]
		if v.Value == nil {
			return fmt.Errorf("secret %s: the history holds no value for it (read without its secrets provider?)", k)
		}
		if _, err := s.runInput(ctx, strings.NewReader(*v.Value), "config", "set", "--secret", k); err != nil {
			return fmt.Errorf("set secret %s: %w", k, scrub(err, cfg))
		}
	}
	if len(remove) > 0 {
		if err := s.stack.RemoveAllConfig(ctx, remove); err != nil {
			return fmt.Errorf("pulumi config rm-all %s: %w", strings.Join(remove, " "), err)
		}
	}
	return nil
}

// Up runs `pulumi up`, its progress going to s.Progress.
func (s *Stack) Up(ctx context.Context, message string) error {
	_, err := s.stack.Up(ctx, optup.Message(message), optup.ProgressStreams(s.Progress), optup.ErrorProgressStreams(s.Progress))
	if err != nil {
		return fmt.Errorf("pulumi up: %w", err)
	}
	return nil
}

// run runs a pulumi command for this stack through the workspace's CLI,
// with the workspace's environment, and returns its stdout.
func (s *Stack) run(ctx context.Context, args ...string) (string, error) {
	return s.runInput(ctx, nil, args...)
}

// runInput is run with stdin.
func (s *Stack) runInput(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	ws := s.stack.Workspace()
	var env []string
	if home := ws.PulumiHome(); home != "" {
		env = append(env, "PULUMI_HOME="+home)
	}
	for k, v := range ws.GetEnvVars() {
		env = append(env, k+"="+v)
	}
	args = append(args, "--stack", s.Name())
	stdout, stderr, code, err := ws.PulumiCommand().Run(ctx, ws.WorkDir(), stdin, nil, nil, env, args...)
	if err != nil {
		return "", fmt.Errorf("pulumi %s (exit %d): %s: %w", strings.Join(args[:2], " "), code, strings.TrimSpace(stderr), err)
	}
	return stdout, nil
}

// scrub keeps secret values out of an error that may quote the command
// line it ran (`config set-all --json …` carries them).
func scrub(err error, cfg map[string]rollback.ConfigValue) error {
	msg := err.Error()
	for _, v := range cfg {
		if !v.Secret || v.Value == nil || len(*v.Value) < 4 {
			continue
		}
		msg = strings.ReplaceAll(msg, *v.Value, "[secret]")
		// The command line holds it JSON-escaped.
		if q, err := json.Marshal(*v.Value); err == nil {
			msg = strings.ReplaceAll(msg, string(q[1:len(q)-1]), "[secret]")
		}
	}
	if msg == err.Error() {
		return err
	}
	return errors.New(msg)
}
