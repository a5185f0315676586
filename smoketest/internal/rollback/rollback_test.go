package rollback

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// recordedStack replays a recorded history and records what a rollback
// does to the stack.
type recordedStack struct {
	history []Update
	config  map[string]ConfigValue
	files   ConfigFiles
	upErr   error

	setCalls int
	set      map[string]ConfigValue
	removed  []string
	upMsgs   []string
}

func (s *recordedStack) Name() string { return "dev" }
func (s *recordedStack) History(context.Context) ([]Update, error) {
	return s.history, nil
}
func (s *recordedStack) Config(context.Context) (map[string]ConfigValue, error) {
	return s.config, nil
}
func (s *recordedStack) ConfigFiles(context.Context) (ConfigFiles, error) {
	return s.files, nil
}
func (s *recordedStack) SetConfig(_ context.Context, cfg map[string]ConfigValue, remove []string) error {
	s.setCalls++
	s.set, s.removed = cfg, remove
	return nil
}
func (s *recordedStack) Up(_ context.Context, msg string) error {
	s.upMsgs = append(s.upMsgs, msg)
	return s.upErr
}

func TestRunRestoresTheTargetConfigurationAndRunsUp(t *testing.T) {
	h := loadHistory(t, "failed-last.json")
	// Since v7 someone added a key by hand; the target never had it.
	now := copyConfig(h[0].Config)
	extra := "true"
	now["relaygate:loadBalancer"] = ConfigValue{Value: &extra}
	s := &recordedStack{history: h, config: now}

	var out bytes.Buffer
	plan, err := Run(t.Context(), s, &out)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Target.Number != 6 {
		t.Fatalf("rolled back to %s, want update 6", plan.Target.Label())
	}
	// Update 6's configuration, with reuseImage on so that `up` deploys
	// its image instead of building the current checkout under its tag.
	want := copyConfig(h[1].Config)
	on := "true"
	want[ReuseImageKey] = ConfigValue{Value: &on}
	if !reflect.DeepEqual(s.set, want) {
		t.Errorf("restored config differs from update 6's with reuseImage on:\n got %v\nwant %v", s.set, want)
	}
	if got := s.set["relaygate:models"].ObjectValue; got == nil {
		t.Error("the structured models value lost its objectValue")
	}
	if !reflect.DeepEqual(s.removed, []string{"relaygate:loadBalancer"}) {
		t.Errorf("removed %v, want the key update 6 did not have", s.removed)
	}
	wantMsg := "rollback of dev: v7 -> v6 (restores the configuration of update 6)"
	if len(s.upMsgs) != 1 || s.upMsgs[0] != wantMsg {
		t.Errorf("up messages %q, want one %q", s.upMsgs, wantMsg)
	}
	// The message is what lets a later rollback skip v7.
	if from, _, ok := (Update{Message: s.upMsgs[0]}).rollback(); !ok || from != 7 {
		t.Errorf("rollback(%q) reverted %d, %v; want 7", s.upMsgs[0], from, ok)
	}
	for _, want := range []string{
		`config relaygate:imageTag: "sha-7a1b2c3" -> "sha-6d4e5f6"`, "config relaygate:loadBalancer: removed",
		`config relaygate:reuseImage: set to "true"`, `image: tag "sha-6d4e5f6" as the registry holds it (reuseImage); nothing is built`,
		"Pulumi.dev.yaml now holds it",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	for _, v := range h[1].Config {
		if v.Secret && strings.Contains(out.String(), *v.Value) {
			t.Error("output shows a secret value")
		}
	}
}

// TestRunAlwaysReusesTheImage: whatever reuseImage the target update had
// (absent before the key existed, false for a deploy, true for an earlier
// rollback), the rollback writes true, and the stack's current value does
// not matter either.
func TestRunAlwaysReusesTheImage(t *testing.T) {
	for _, tc := range []struct {
		name           string
		target, now    string // "" means the key is absent
		wantChangeLine string
	}{
		{"target without the key", "", "false", `config relaygate:reuseImage: "false" -> "true"`},
		{"target built its image", "false", "false", `config relaygate:reuseImage: "false" -> "true"`},
		{"target was a rollback", "true", "", `config relaygate:reuseImage: set to "true"`},
		{"already on", "false", "true", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := loadHistory(t, "failed-last.json")
			setReuse(h[1].Config, tc.target)
			now := copyConfig(h[0].Config)
			setReuse(now, tc.now)
			s := &recordedStack{history: h, config: now}
			var out bytes.Buffer
			if _, err := Run(t.Context(), s, &out); err != nil {
				t.Fatal(err)
			}
			got, ok := s.set[ReuseImageKey]
			if !ok || got.Value == nil || *got.Value != "true" || got.Secret || got.ObjectValue != nil {
				t.Errorf("wrote reuseImage %+v, want the plain value \"true\"", got)
			}
			if tc.target == "" && slices.Contains(s.removed, ReuseImageKey) {
				t.Error("removed reuseImage because the target did not have it")
			}
			if tc.wantChangeLine != "" && !strings.Contains(out.String(), tc.wantChangeLine) {
				t.Errorf("output lacks %q:\n%s", tc.wantChangeLine, out.String())
			}
			if tc.wantChangeLine == "" && strings.Contains(out.String(), "config relaygate:reuseImage") {
				t.Errorf("output reports an unchanged reuseImage:\n%s", out.String())
			}
			if tc.target == "" {
				if _, had := h[1].Config[ReuseImageKey]; had {
					t.Error("Run changed the history it read")
				}
			}
		})
	}
}

func setReuse(cfg map[string]ConfigValue, v string) {
	if v == "" {
		delete(cfg, ReuseImageKey)
		return
	}
	cfg[ReuseImageKey] = ConfigValue{Value: &v}
}

func TestRunRefusesAndChangesNothing(t *testing.T) {
	for _, name := range []string{"first-update.json", "nothing-before.json"} {
		t.Run(name, func(t *testing.T) {
			h := loadHistory(t, name)
			s := &recordedStack{history: h, config: h[0].Config}
			var out bytes.Buffer
			_, err := Run(t.Context(), s, &out)
			if !errors.Is(err, ErrNothingToRollBack) {
				t.Fatalf("err = %v, want ErrNothingToRollBack", err)
			}
			if s.setCalls != 0 || len(s.upMsgs) != 0 {
				t.Errorf("a refused rollback changed config %d times and ran up %d times", s.setCalls, len(s.upMsgs))
			}
		})
	}
}

func TestRunReportsAFailedUp(t *testing.T) {
	h := loadHistory(t, "several-successes.json")
	s := &recordedStack{history: h, config: h[0].Config, upErr: errors.New("error: 1 resource failed")}
	_, err := Run(t.Context(), s, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "pulumi up of stack dev with the configuration of update 10: error: 1 resource failed") {
		t.Errorf("err = %v, want the failed up named with its target", err)
	}
}

func copyConfig(m map[string]ConfigValue) map[string]ConfigValue {
	out := make(map[string]ConfigValue, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// TestRunAfter: the deploy gate notes the stack's newest version before its
// `up` and rolls back after a failure only when the `up` recorded an update.
// up-failed-unrecorded.json is the dev stack of failed-last.json as it was
// when deploy sha-7a1b2c3's `up` failed in its preview: no update 7, the
// stack still on the good update 6, which a rollback would have reverted.
func TestRunAfter(t *testing.T) {
	for _, tc := range []struct {
		name       string
		history    []Update
		after      int
		wantTarget int    // 0: refused, changing nothing
		wantErr    string // for refusals
		applied    bool   // the refusal is not ErrNothingApplied
	}{
		{name: "up failed before recording an update", history: loadHistory(t, "up-failed-unrecorded.json"), after: 6,
			wantErr: "no update was recorded on stack dev after update 6: its newest is still update 6, so the failed `up` stopped before it changed the stack"},
		{name: "up recorded a failed update", history: loadHistory(t, "failed-last.json"), after: 6, wantTarget: 6},
		{name: "the smoke test failed after a successful up", history: loadHistory(t, "several-successes.json"), after: 11, wantTarget: 10},
		{name: "a stack whose first up failed before recording", history: nil, after: 0,
			wantErr: "no update was recorded on stack dev after update 0: it has none"},
		{name: "a stack whose first update failed: nothing to roll back to", history: loadHistory(t, "first-update.json"), after: 0,
			wantErr: "update 1 is the first update of stack dev", applied: true},
		// DIY backend: after is the count of updates -print-version saw.
		{name: "DIY backend: up failed in its preview, recording nothing", history: loadHistory(t, "diy-up-failed-unrecorded.json"), after: 2,
			wantErr: "no update was recorded on stack dev after update #2 of 2026-12-03T10:06:30.000Z: " +
				"its newest is still update #2 of 2026-12-03T10:06:30.000Z, so the failed `up` stopped before it changed the stack"},
		{name: "DIY backend: up recorded a failed update", history: loadHistory(t, "diy-failed-last.json"), after: 2, wantTarget: 2},
		{name: "DIY backend: the smoke test failed after a successful up", history: loadHistory(t, "diy-failed-last.json")[1:], after: 1, wantTarget: 1},
		{name: "DIY backend: a stack whose first update failed", history: loadHistory(t, "diy-failed-last.json")[2:], after: 0,
			wantErr: "update #1 of 2026-12-03T10:06:26.000Z is the first update of stack dev", applied: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &recordedStack{history: tc.history}
			if len(tc.history) > 0 {
				s.config = copyConfig(tc.history[0].Config)
			}
			var out bytes.Buffer
			plan, err := RunAfter(t.Context(), s, tc.after, &out)
			if tc.wantTarget != 0 {
				if err != nil {
					t.Fatal(err)
				}
				if plan.Target.Number != tc.wantTarget || len(s.upMsgs) != 1 {
					t.Errorf("rolled back to %s with %d ups, want update %d with one", plan.Target.Label(), len(s.upMsgs), tc.wantTarget)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
			}
			if got := errors.Is(err, ErrNothingApplied); got == tc.applied {
				t.Errorf("errors.Is(err, ErrNothingApplied) = %v, want %v", got, !tc.applied)
			}
			if errors.Is(err, ErrNothingApplied) && errors.Is(err, ErrNothingToRollBack) {
				t.Error("nothing applied must be told apart from nothing to roll back to")
			}
			if s.setCalls != 0 || len(s.upMsgs) != 0 {
				t.Errorf("a refused rollback changed config %d times and ran up %d times", s.setCalls, len(s.upMsgs))
			}
		})
	}
	if _, err := RunAfter(t.Context(), &recordedStack{}, -1, &bytes.Buffer{}); err == nil {
		t.Error("RunAfter took a negative version")
	}
}

// TestRunWithoutAfterStillRollsBackTheNewest: plain Run (make rollback) has
// no version to compare with; on the history of a deploy whose `up` failed
// before recording, it reverts the good update 6, which is why the deploy
// gate uses RunAfter.
func TestRunWithoutAfterStillRollsBackTheNewest(t *testing.T) {
	h := loadHistory(t, "up-failed-unrecorded.json")
	s := &recordedStack{history: h, config: copyConfig(h[0].Config)}
	plan, err := Run(t.Context(), s, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if plan.Current.Number != 6 || plan.Target.Number != 5 {
		t.Errorf("from %s to %s, want from update 6 to update 5", plan.Current.Label(), plan.Target.Label())
	}
}

// TestLatestNumber: what -print-version prints, the version of the newest
// update on Pulumi Cloud and the count of updates on a DIY backend, whose
// versions are all 0; either grows by one with each recorded update.
func TestLatestNumber(t *testing.T) {
	for name, want := range map[string]int{
		"several-successes.json": 12, "up-failed-unrecorded.json": 6, "first-update.json": 1,
		"diy-up-failed-unrecorded.json": 2, "diy-failed-last.json": 3, "diy-after-two-rollbacks.json": 5,
	} {
		if got := LatestNumber(loadHistory(t, name)); got != want {
			t.Errorf("LatestNumber(%s) = %d, want %d", name, got, want)
		}
	}
	// A refresh or destroy counts: it is the newest operation either way.
	h := append([]Update{{Version: 13, Kind: "refresh", Result: ResultSucceeded}}, loadHistory(t, "several-successes.json")...)
	if got := LatestNumber(h); got != 13 {
		t.Errorf("LatestNumber with a newer refresh = %d, want 13", got)
	}
	diy := append([]Update{{Kind: "refresh", Result: ResultSucceeded, StartTime: "2026-12-03T10:07:00.000Z"}}, loadHistory(t, "diy-failed-last.json")...)
	if got := LatestNumber(diy); got != 4 {
		t.Errorf("LatestNumber of a DIY history with a newer refresh = %d, want 4", got)
	}
	if got := LatestNumber(nil); got != 0 {
		t.Errorf("LatestNumber(nil) = %d, want 0", got)
	}
}

// TestRunOnADIYBackend: on the real history of a file:// backend, a
// rollback after a failed update restores the last good update's
// configuration and tells the operator which update that is by its start
// time, there being no versions.
func TestRunOnADIYBackend(t *testing.T) {
	h := loadHistory(t, "diy-failed-last.json")
	s := &recordedStack{history: h, config: copyConfig(h[0].Config)}
	var out bytes.Buffer
	plan, err := Run(t.Context(), s, &out)
	if err != nil {
		t.Fatal(err)
	}
	want := restored(h[1].Config)
	if !reflect.DeepEqual(s.set, want) {
		t.Errorf("restored config differs from that of update #2 with reuseImage on:\n got %v\nwant %v", s.set, want)
	}
	wantMsg := "rollback of dev: #3 -> #2 (restores the configuration of update #2 of 2026-12-03T10:06:30.000Z)"
	if len(s.upMsgs) != 1 || s.upMsgs[0] != wantMsg {
		t.Errorf("up messages %q, want one %q", s.upMsgs, wantMsg)
	}
	for _, want := range []string{
		"rollback of stack dev: from update #3 (failed, 2026-12-03T10:06:45.000Z) to update #2 (succeeded, 2026-12-03T10:06:30.000Z)",
		"update #2 was: deploy sha-2",
		`config histprobe:imageTag: "sha-3" -> "sha-2"`,
		"stack dev is back on the configuration of update #2 of 2026-12-03T10:06:30.000Z",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), `"v"`) {
		t.Error("output shows the secret value")
	}
	if plan.Current.Label() != "update #3 of 2026-12-03T10:06:45.000Z" {
		t.Errorf("current update %q", plan.Current.Label())
	}
}

// TestRunRefusesACodeOnlyDeploy: the refusal for a deploy that changed
// only code changes nothing either.
func TestRunRefusesACodeOnlyDeploy(t *testing.T) {
	h := loadHistory(t, "code-only.json")
	s := &recordedStack{history: h, config: copyConfig(h[0].Config)}
	_, err := RunAfter(t.Context(), s, 6, &bytes.Buffer{})
	if !errors.Is(err, ErrNothingToRollBack) || !strings.Contains(err.Error(), "Revert the commit and deploy again") {
		t.Fatalf("err = %v, want ErrNothingToRollBack saying to revert the commit", err)
	}
	if s.setCalls != 0 || len(s.upMsgs) != 0 {
		t.Errorf("a refused rollback changed config %d times and ran up %d times", s.setCalls, len(s.upMsgs))
	}
}

// TestRunKeepsTheOperatorsAccess: the update restored was run by someone
// else (a laptop's /32, another SSH key). Restoring their access would lock
// out whoever rolls back and, for the key, replace every host: the current
// values stay.
func TestRunKeepsTheOperatorsAccess(t *testing.T) {
	str := func(v string) *string { return &v }
	h := loadHistory(t, "failed-last.json")
	h[1].Config["relaygate:operatorCidrs"] = ConfigValue{Value: str(`["198.51.100.7/32"]`)} // v6, from a laptop
	h[1].Config["relaygate:sshPublicKey"] = ConfigValue{Value: str("ssh-ed25519 AAAAlaptop")}
	now := copyConfig(h[0].Config)
	now["relaygate:operatorCidrs"] = ConfigValue{Value: str(`["203.0.113.0/28"]`)} // CI's runners
	s := &recordedStack{history: h, config: now}
	var out bytes.Buffer
	if _, err := Run(t.Context(), s, &out); err != nil {
		t.Fatal(err)
	}
	if v := s.set["relaygate:operatorCidrs"].Value; v == nil || *v != `["203.0.113.0/28"]` {
		t.Errorf("operatorCidr written as %v, want the current 203.0.113.0/28", v)
	}
	if _, ok := s.set["relaygate:sshPublicKey"]; ok {
		t.Error("wrote update 6's sshPublicKey; the stack has none set now")
	}
	if slices.Contains(s.removed, "relaygate:operatorCidrs") || strings.Contains(out.String(), "operatorCidr") {
		t.Errorf("the rollback touched operatorCidr: removed %v\n%s", s.removed, out.String())
	}
}
