package pulumistack

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blang/semver"
	"github.com/pulumi/pulumi/sdk/v3/go/auto"

	"github.com/relaygate/relaygate/smoketest/internal/rollback"
)

func TestProjectDir(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "Pulumi.yaml"), []byte("name: relaygate\nruntime: go\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	deep := filepath.Join(root, "smoketest", "cmd", "rollback")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, from := range []string{root, deep} {
		if got, err := ProjectDir(from); err != nil || got != root {
			t.Errorf("ProjectDir(%s) = %q, %v; want %s", from, got, err, root)
		}
	}
	if _, err := ProjectDir(t.TempDir()); err == nil {
		t.Error("found a project where there is none")
	}
}

// fakeCLI stands in for the pulumi binary: it records each command line and
// what it was given on stdin, and answers success.
type fakeCLI struct {
	calls []cliCall
}

type cliCall struct {
	args  []string
	stdin string
}

func (f *fakeCLI) Run(_ context.Context, _ string, stdin io.Reader, _, _ []io.Writer, _ []string, args ...string) (string, string, int, error) {
	c := cliCall{args: args}
	if stdin != nil {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return "", "", 1, err
		}
		c.stdin = string(b)
	}
	f.calls = append(f.calls, c)
	return "", "", 0, nil
}

func (f *fakeCLI) Version() semver.Version { return semver.MustParse("3.200.0") }

// TestSetConfigKeepsSecretsOffTheCommandLine: a rollback restores decrypted
// secrets; none may appear in an argument, where ps shows it to anyone.
func TestSetConfigKeepsSecretsOffTheCommandLine(t *testing.T) {
	ctx := t.Context()
	cli := &fakeCLI{}
	ws, err := auto.NewLocalWorkspace(ctx, auto.Pulumi(cli), auto.WorkDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	st, err := auto.SelectStack(ctx, "dev", ws)
	if err != nil {
		t.Fatal(err)
	}
	s := &Stack{stack: st, Progress: io.Discard}
	cli.calls = nil

	str := func(v string) *string { return &v }
	secrets := map[string]string{
		"relaygate:gatewayApiKey":   "sk-gw-5be1c0ffee0123456789",
		"relaygate:holysheepApiKey": "hs-live-\"quoted\"-0123456789",
		"relaygate:openaiApiKey":    "sk-proj-abcdef0123456789",
	}
	cfg := map[string]rollback.ConfigValue{
		"relaygate:imageTag":   {Value: str("sha-6d4e5f6")},
		"relaygate:reuseImage": {Value: str("true")},
		"relaygate:models":     {Value: str(`["gpt-4.1"]`), ObjectValue: []any{"gpt-4.1"}},
	}
	for k, v := range secrets {
		cfg[k] = rollback.ConfigValue{Value: str(v), Secret: true}
	}
	if err := s.SetConfig(ctx, cfg, []string{"relaygate:loadBalancer"}); err != nil {
		t.Fatal(err)
	}

	viaStdin := map[string]string{}
	var setAll, rmAll bool
	for _, c := range cli.calls {
		line := strings.Join(c.args, " ")
		for k, v := range secrets {
			if strings.Contains(line, v) || strings.Contains(line, strings.ReplaceAll(v, `"`, `\"`)) {
				t.Errorf("secret %s on the command line: %s", k, line)
			}
		}
		switch {
		case len(c.args) >= 2 && c.args[0] == "config" && c.args[1] == "set-all":
			setAll = true
			for _, k := range []string{"relaygate:imageTag", "relaygate:reuseImage", `"objectValue":["gpt-4.1"]`} {
				if !strings.Contains(line, k) {
					t.Errorf("set-all lacks %s: %s", k, line)
				}
			}
		case len(c.args) >= 2 && c.args[0] == "config" && c.args[1] == "set":
			if !slices.Contains(c.args, "--secret") {
				t.Errorf("a secret set without --secret: %s", line)
			}
			viaStdin[c.args[3]] = c.stdin
		case len(c.args) >= 2 && c.args[0] == "config" && c.args[1] == "rm-all":
			rmAll = slices.Contains(c.args, "relaygate:loadBalancer")
		}
	}
	if !setAll || !rmAll {
		t.Errorf("set-all run %v, rm-all of the removed key run %v; want both: %v", setAll, rmAll, cli.calls)
	}
	for k, v := range secrets {
		if viaStdin[k] != v {
			t.Errorf("secret %s went in as %q on stdin, want %q", k, viaStdin[k], v)
		}
	}
}

// historyCLI answers `pulumi stack history --json` from n updates, newest
// first, as the CLI pages them: versions n..1 where versioned (Pulumi
// Cloud), every version 0 otherwise (a self-managed backend).
type historyCLI struct {
	fakeCLI
	n         int
	versioned bool
}

func (f *historyCLI) Run(ctx context.Context, dir string, stdin io.Reader, out, errs []io.Writer, env []string, args ...string) (string, string, int, error) {
	if len(args) < 2 || args[0] != "stack" || args[1] != "history" {
		return f.fakeCLI.Run(ctx, dir, stdin, out, errs, env, args...)
	}
	f.calls = append(f.calls, cliCall{args: args})
	size, page := 10, 1
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--page-size":
			size, _ = strconv.Atoi(args[i+1])
		case "--page":
			page, _ = strconv.Atoi(args[i+1])
		}
	}
	h := []map[string]any{}
	for i := (page - 1) * size; i < min(page*size, f.n); i++ {
		version := 0
		if f.versioned {
			version = f.n - i
		}
		h = append(h, map[string]any{"version": version, "kind": "update", "result": "succeeded",
			"startTime": time.Unix(int64(1e9-i), 0).UTC().Format("2006-01-02T15:04:05.000Z07:00"), "config": map[string]any{}})
	}
	b, err := json.Marshal(h)
	return string(b), "", 0, err
}

func historyStack(t *testing.T, cli *historyCLI) *Stack {
	t.Helper()
	ws, err := auto.NewLocalWorkspace(t.Context(), auto.Pulumi(cli), auto.WorkDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	st, err := auto.SelectStack(t.Context(), "local", ws)
	if err != nil {
		t.Fatal(err)
	}
	cli.calls = nil
	return &Stack{stack: st, Progress: io.Discard}
}

// TestHistoryAndLatestNumber: on a self-managed backend every update has
// version 0 and is numbered by its place in the history, so the history is
// read to its end, past the pages a Pulumi Cloud history is cut at, and
// -print-version's number is the count of updates. Neither decrypts.
func TestHistoryAndLatestNumber(t *testing.T) {
	const beyondCap = historyPageSize*historyMaxPages + 120
	for _, tc := range []struct {
		name        string
		cli         *historyCLI
		wantLen     int // of History
		wantLatest  int
		wantLatestN int // history commands LatestNumber runs
	}{
		{"Pulumi Cloud", &historyCLI{n: beyondCap, versioned: true}, historyPageSize * historyMaxPages, beyondCap, 1},
		{"self-managed backend", &historyCLI{n: beyondCap}, beyondCap, beyondCap, 1 + beyondCap/historyPageSize + 1},
		{"self-managed backend, a full last page", &historyCLI{n: 2 * historyPageSize}, 2 * historyPageSize, 2 * historyPageSize, 1 + 3},
		{"no updates yet", &historyCLI{}, 0, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := historyStack(t, tc.cli)
			h, err := s.History(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if len(h) != tc.wantLen {
				t.Errorf("History read %d updates, want %d", len(h), tc.wantLen)
			}
			for _, c := range tc.cli.calls {
				if !slices.Contains(c.args, "--show-secrets") {
					t.Errorf("History ran %q without --show-secrets", c.args)
				}
			}
			tc.cli.calls = nil
			latest, err := s.LatestNumber(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if latest != tc.wantLatest || len(tc.cli.calls) != tc.wantLatestN {
				t.Errorf("LatestNumber = %d after %d history commands, want %d after %d", latest, len(tc.cli.calls), tc.wantLatest, tc.wantLatestN)
			}
			for _, c := range tc.cli.calls {
				if slices.Contains(c.args, "--show-secrets") {
					t.Errorf("LatestNumber decrypts: %q", c.args)
				}
			}
		})
	}
}
