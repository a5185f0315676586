package pulumistack

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

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
