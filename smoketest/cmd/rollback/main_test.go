package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/relaygate/relaygate/smoketest/internal/rollback"
)

// TestUsage runs nothing against a stack: every case is refused first.
func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{}, {"-stack"}, {"-stack", "dev", "extra"}, {"-no-such-flag"},
		{"-stack", "dev", "-after", "-1"},
		{"-stack", "dev", "-after", "3", "-print-version"},
		{"-stack", "dev", "-wait-ready", "-1s"},
	} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != exitUsage {
			t.Errorf("run(%q) = %d, want %d (usage)", args, code, exitUsage)
		}
	}
}

// recorded is a stack replaying recorded history (the rollback package's
// test data); it records the `up`s a run makes.
type recorded struct {
	history []rollback.Update
	ups     int
}

func (s *recorded) Name() string { return "dev" }
func (s *recorded) History(context.Context) ([]rollback.Update, error) {
	return s.history, nil
}
func (s *recorded) Config(context.Context) (map[string]rollback.ConfigValue, error) {
	return s.history[0].Config, nil
}
func (s *recorded) ConfigFiles(context.Context) (rollback.ConfigFiles, error) {
	return rollback.ConfigFiles{}, nil
}
func (s *recorded) SetConfig(context.Context, map[string]rollback.ConfigValue, []string) error {
	return nil
}
func (s *recorded) Up(context.Context, string) error { s.ups++; return nil }
func (s *recorded) LatestNumber(context.Context) (int, error) {
	return rollback.LatestNumber(s.history), nil
}
func (s *recorded) Outputs(context.Context) (map[string]any, error) {
	return nil, errors.New("no outputs in recorded history")
}

func replay(t *testing.T, fixture string) *recorded {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "internal", "rollback", "testdata", fixture))
	if err != nil {
		t.Fatal(err)
	}
	h, err := rollback.ParseHistory(b)
	if err != nil {
		t.Fatal(err)
	}
	s := &recorded{history: h}
	saved := openStack
	openStack = func(_ context.Context, name, _ string, _ io.Writer) (stack, error) {
		if name != "dev" {
			t.Errorf("opened stack %q, want dev", name)
		}
		return s, nil
	}
	t.Cleanup(func() { openStack = saved })
	return s
}

// TestDeployGate is what scripts/deploy.sh does around a failed `up`:
// -print-version before it, -after with that version once it failed.
func TestDeployGate(t *testing.T) {
	t.Run("print-version", func(t *testing.T) {
		s := replay(t, "up-failed-unrecorded.json")
		var out, errOut bytes.Buffer
		if code := run([]string{"-stack", "dev", "-print-version"}, &out, &errOut); code != 0 || out.String() != "6\n" {
			t.Errorf("exit %d, stdout %q, stderr %q; want 0 and \"6\\n\"", code, out.String(), errOut.String())
		}
		if s.ups != 0 {
			t.Error("-print-version ran up")
		}
	})
	t.Run("up failed before recording: exit 3, nothing rolled back", func(t *testing.T) {
		s := replay(t, "up-failed-unrecorded.json")
		var out, errOut bytes.Buffer
		code := run([]string{"-stack", "dev", "-after", "6"}, &out, &errOut)
		if code != exitNothingApplied || !strings.Contains(errOut.String(), "nothing rolled back") || !strings.Contains(errOut.String(), "after update 6") {
			t.Errorf("exit %d, stderr %q; want %d saying nothing was rolled back", code, errOut.String(), exitNothingApplied)
		}
		if s.ups != 0 {
			t.Error("rolled back a stack the failed up never changed")
		}
	})
	t.Run("up recorded a failed update: rolled back", func(t *testing.T) {
		s := replay(t, "failed-last.json")
		var out, errOut bytes.Buffer
		if code := run([]string{"-stack", "dev", "-after", "6", "-skip-smoke"}, &out, &errOut); code != 0 || s.ups != 1 {
			t.Errorf("exit %d with %d ups, stderr %q; want 0 and one up", code, s.ups, errOut.String())
		}
	})
	t.Run("a code-only deploy: refused", func(t *testing.T) {
		s := replay(t, "code-only.json")
		var out, errOut bytes.Buffer
		code := run([]string{"-stack", "dev", "-after", "6", "-skip-smoke"}, &out, &errOut)
		if code != 1 || s.ups != 0 || !strings.Contains(errOut.String(), "rollback: refused:") || !strings.Contains(errOut.String(), "Revert the commit") {
			t.Errorf("exit %d with %d ups, stderr %q; want a refusal (1) and no up", code, s.ups, errOut.String())
		}
	})
}

// TestDeployGateOnADIYBackend is the deploy gate on the real history of a
// file:// backend, whose updates all have version 0: -print-version prints
// the count of updates, and -after compares with it.
func TestDeployGateOnADIYBackend(t *testing.T) {
	for _, tc := range []struct {
		name, fixture string
		args          []string
		wantCode      int
		wantOut       string // stdout, exactly, when set
		wantErr       string // in stderr
		wantInOut     string // in stdout
		wantUps       int
	}{
		{name: "print-version before a deploy: the count of updates", fixture: "diy-up-failed-unrecorded.json",
			args: []string{"-print-version"}, wantOut: "2\n"},
		{name: "print-version after a recorded failed update", fixture: "diy-failed-last.json",
			args: []string{"-print-version"}, wantOut: "3\n"},
		{name: "up failed in its preview: exit 3, nothing rolled back", fixture: "diy-up-failed-unrecorded.json",
			args: []string{"-after", "2"}, wantCode: exitNothingApplied,
			wantErr: "nothing rolled back: no update was recorded on stack dev after update #2 of 2026-12-03T10:06:30.000Z"},
		{name: "up recorded a failed update: rolled back to the update before it", fixture: "diy-failed-last.json",
			args: []string{"-after", "2", "-skip-smoke"}, wantUps: 1,
			wantInOut: "rollback: configuration of update #2 of 2026-12-03T10:06:30.000Z restored"},
		{name: "make rollback after a rollback goes further back", fixture: "diy-after-rollback.json",
			args: []string{"-skip-smoke"}, wantUps: 1,
			wantInOut: "rollback: configuration of update #1 of 2026-12-03T10:06:26.000Z restored"},
		{name: "a third rollback: refused, naming the updates by time", fixture: "diy-after-two-rollbacks.json",
			args: []string{"-skip-smoke"}, wantCode: 1,
			wantErr: "rollback: refused: nothing to roll back to: stack dev has no successful update before update #5 of 2026-12-03T10:10:07.000Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := replay(t, tc.fixture)
			var out, errOut bytes.Buffer
			code := run(append([]string{"-stack", "dev"}, tc.args...), &out, &errOut)
			if code != tc.wantCode || s.ups != tc.wantUps {
				t.Errorf("exit %d with %d ups, want %d with %d; stderr %q", code, s.ups, tc.wantCode, tc.wantUps, errOut.String())
			}
			if tc.wantOut != "" && out.String() != tc.wantOut {
				t.Errorf("stdout %q, want %q", out.String(), tc.wantOut)
			}
			if !strings.Contains(out.String(), tc.wantInOut) {
				t.Errorf("stdout %q, want it to contain %q", out.String(), tc.wantInOut)
			}
			if !strings.Contains(errOut.String(), tc.wantErr) {
				t.Errorf("stderr %q, want it to contain %q", errOut.String(), tc.wantErr)
			}
		})
	}
}
