package rollback

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func loadHistory(t *testing.T, name string) []Update {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	h, err := ParseHistory(b)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestChoose(t *testing.T) {
	cases := []struct {
		name    string
		history func(t *testing.T) []Update
		// wantTarget is the Number of the update chosen (its version, or
		// on a DIY backend its place from the oldest); 0 means Choose must
		// refuse with wantErr in its message.
		wantTarget  int
		wantCurrent int
		wantImage   string
		wantSkipped []string
		wantErr     string
		nothing     bool // the refusal is ErrNothingToRollBack
	}{
		{
			name:       "failed last update: back to the success before it",
			history:    fixture("failed-last.json"),
			wantTarget: 6, wantCurrent: 7, wantImage: "sha-6d4e5f6",
		},
		{
			name:       "several successes: the newest before the current, past a refresh",
			history:    fixture("several-successes.json"),
			wantTarget: 10, wantCurrent: 12, wantImage: "sha-b16b00b",
		},
		{
			name:       "after a rollback: neither the reverted update nor an identical configuration",
			history:    fixture("after-rollback.json"),
			wantTarget: 12, wantCurrent: 15, wantImage: "sha-900d12",
			wantSkipped: []string{"v14: reverted by the rollback in update 15", "v13: same configuration as the current update"},
		},
		{
			name: "a deploy from before reuseImage existed has the configuration its rollback restored",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "after-rollback.json")
				if *h[0].Config[ReuseImageKey].Value != "true" || *h[2].Config[ReuseImageKey].Value != "false" {
					t.Fatal("after-rollback.json: the rollback v15 must have reuseImage true and the deploy v13 false")
				}
				delete(h[2].Config, ReuseImageKey) // v13
				return h
			},
			wantTarget: 12, wantCurrent: 15, wantImage: "sha-900d12",
			wantSkipped: []string{"v14: reverted by the rollback in update 15", "v13: same configuration as the current update"},
		},
		{
			name: "any other difference still counts",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "after-rollback.json")
				budget := "1200"
				h[2].Config["relaygate:latencyBudgetP95Ms"] = ConfigValue{Value: &budget} // v13
				return h
			},
			wantTarget: 13, wantCurrent: 15, wantImage: "sha-d00d13",
			wantSkipped: []string{"v14: reverted by the rollback in update 15"},
		},
		{
			name: "a third rollback does not return to what the second took away",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "after-rollback.json") // v15 (rollback to v13), v14, v13, v12
				// v16 reverted the rollback v15 (v13's configuration failed
				// too) and restored v12; v11 is an older good deploy.
				v16 := Update{Version: 16, Kind: KindUpdate, Result: ResultSucceeded,
					Message: Message("dev", h[0], h[3]), Config: restored(h[3].Config)}
				v11 := h[3]
				v11.Version, v11.Message, v11.Config = 11, "deploy sha-01d011", copyConfig(h[3].Config)
				tag := "sha-01d011"
				v11.Config["relaygate:imageTag"] = ConfigValue{Value: &tag}
				return append(append([]Update{v16}, h...), v11)
			},
			wantTarget: 11, wantCurrent: 16, wantImage: "sha-01d011",
			wantSkipped: []string{
				"v15: reverted by the rollback in update 16",
				"v14: reverted by the rollback in update 15",
				"v13: restored by update 15, which was reverted by the rollback in update 16",
				"v12: same configuration as the current update",
			},
		},
		{
			name:    "a deploy that changed only code: refused rather than going two deploys back",
			history: fixture("code-only.json"),
			wantErr: `update 7 of stack dev has the same configuration as update 6 before it (image tag "sha-6d4e5f6"); ` +
				"it ran commit 9c1d2e3 where update 6 ran 384877b: what it changed is code, not configuration",
			nothing: true,
		},
		{
			name: "a redeploy of the same commit and configuration: refused",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "code-only.json")
				h[0].Environment["git.head"] = h[1].Environment["git.head"]
				return h
			},
			wantErr: "both ran commit 384877b: what it changed is code, not configuration (the Pulumi program, or an image rebuilt under the same tag), if anything. " +
				"A rollback restores an older configuration and still runs this checkout's program, so it cannot undo that, " +
				"and restoring a configuration older than update 6 would move the stack two deploys back while running the new code. " +
				"Revert the commit and deploy again (`make deploy STACK=dev`)",
			nothing: true,
		},
		{
			name: "a code-only deploy without recorded commits: refused all the same",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "code-only.json")
				for i := range h {
					h[i].Environment = nil
				}
				return h
			},
			wantErr: `same configuration as update 6 before it (image tag "sha-6d4e5f6"): what it changed is code`, nothing: true,
		},
		{
			name: "rolling back again past an update that changed only code: refused",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "after-rollback.json")
				h[3].Config = copyConfig(h[2].Config) // v12 = v13, which v15 restored
				return h
			},
			wantErr: "update 15 of stack dev (a rollback to update 13) has the same configuration as update 12 before it", nothing: true,
		},
		{
			name:    "nothing succeeded before the current update",
			history: fixture("nothing-before.json"),
			wantErr: "no successful update before update 3 to go back to (older: v2 failed, v1 failed)", nothing: true,
		},
		{
			name:    "first update of the stack",
			history: fixture("first-update.json"),
			wantErr: "update 1 is the first update of stack dev", nothing: true,
		},
		{
			name:    "empty history",
			history: func(*testing.T) []Update { return nil },
			wantErr: "stack dev has never been updated", nothing: true,
		},
		{
			name: "history order does not matter",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "failed-last.json")
				h[0], h[len(h)-1] = h[len(h)-1], h[0]
				return h
			},
			wantTarget: 6, wantCurrent: 7, wantImage: "sha-6d4e5f6",
		},
		{
			name: "a failed update with the last good configuration is repaired by re-applying it",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "failed-last.json")
				h[0].Config = h[1].Config // v7 failed with v6's configuration
				return h
			},
			wantTarget: 6, wantCurrent: 7, wantImage: "sha-6d4e5f6",
		},
		{
			name: "destroyed stack",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "several-successes.json")
				return append([]Update{{Version: 13, Kind: KindDestroy, Result: ResultSucceeded}}, h...)
			},
			wantErr: "was destroyed in update 13", nothing: true,
		},
		{
			name: "update still running",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "several-successes.json")
				h[0].Result, h[0].EndTime = ResultInProgress, nil
				return h
			},
			wantErr: "update 12 of stack dev is still running",
		},
		{
			name: "secrets read without the secrets provider",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "failed-last.json")
				v := undecryptable
				h[1].Config["relaygate:gatewayApiKey"] = ConfigValue{Value: &v, Secret: true}
				h[1].Config["relaygate:holysheepApiKey"] = ConfigValue{Secret: true}
				return h
			},
			wantErr: "relaygate:gatewayApiKey, relaygate:holysheepApiKey could not be decrypted",
		},
		{
			name: "a rollback's message as the Automation API records it, in quotes",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "after-rollback.json")
				h[0].Message = strconv.Quote(h[0].Message) // v15, `up --message=%q`
				return h
			},
			wantTarget: 12, wantCurrent: 15, wantImage: "sha-900d12",
			wantSkipped: []string{"v14: reverted by the rollback in update 15", "v13: same configuration as the current update"},
		},
		// The diy-*.json histories are real: a file:// backend, where every
		// update has version 0, recorded by the Pulumi CLI v3.274.1 (see
		// testdata/README.md). Updates are numbered from the oldest, #1.
		{
			name:       "DIY backend: failed last update: back to the success before it",
			history:    fixture("diy-failed-last.json"),
			wantTarget: 2, wantCurrent: 3, wantImage: "sha-2",
		},
		{
			name:       "DIY backend: after a real rollback, past the update it restored",
			history:    fixture("diy-after-rollback.json"),
			wantTarget: 1, wantCurrent: 4, wantImage: "sha-1",
			wantSkipped: []string{"#2 of 2026-12-03T10:06:30.000Z: same configuration as the current update"},
		},
		{
			name:    "DIY backend: a third rollback does not return to what the second took away",
			history: fixture("diy-after-two-rollbacks.json"),
			wantErr: "stack dev has no successful update before update #5 of 2026-12-03T10:10:07.000Z to go back to " +
				"(older: #4 of 2026-12-03T10:09:14.000Z succeeded, #3 of 2026-12-03T10:06:45.000Z failed, " +
				"#2 of 2026-12-03T10:06:30.000Z succeeded, #1 of 2026-12-03T10:06:26.000Z succeeded); " +
				"passed over: #4 of 2026-12-03T10:09:14.000Z: reverted by the rollback in update #5 of 2026-12-03T10:10:07.000Z; " +
				"#2 of 2026-12-03T10:06:30.000Z: restored by update #4 of 2026-12-03T10:09:14.000Z, " +
				"which was reverted by the rollback in update #5 of 2026-12-03T10:10:07.000Z; " +
				"#1 of 2026-12-03T10:06:26.000Z: same configuration as the current update",
			nothing: true,
		},
		{
			name: "DIY backend: first update of the stack",
			history: func(t *testing.T) []Update {
				return loadHistory(t, "diy-failed-last.json")[2:]
			},
			wantErr: "update #1 of 2026-12-03T10:06:26.000Z is the first update of stack dev", nothing: true,
		},
		{
			name: "DIY backend: nothing succeeded before the current update",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "diy-failed-last.json")
				h[1].Result, h[2].Result = ResultFailed, ResultFailed
				return h
			},
			wantErr: "no successful update before update #3 of 2026-12-03T10:06:45.000Z to go back to " +
				"(older: #2 of 2026-12-03T10:06:30.000Z failed, #1 of 2026-12-03T10:06:26.000Z failed)",
			nothing: true,
		},
		{
			name: "DIY backend: secrets read without the secrets provider",
			history: func(t *testing.T) []Update {
				h := loadHistory(t, "diy-failed-last.json")
				h[1].Config["histprobe:k"] = ConfigValue{Secret: true}
				return h
			},
			wantErr: "in update #2 of 2026-12-03T10:06:30.000Z, the values of histprobe:k could not be decrypted",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := Choose("dev", tc.history(t))
			if tc.wantTarget == 0 {
				if err == nil {
					t.Fatalf("Choose chose %s, want a refusal", plan.Target.Label())
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %q, want it to contain %q", err, tc.wantErr)
				}
				if got := errors.Is(err, ErrNothingToRollBack); got != tc.nothing {
					t.Errorf("errors.Is(err, ErrNothingToRollBack) = %v, want %v", got, tc.nothing)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if plan.Target.Number != tc.wantTarget || plan.Current.Number != tc.wantCurrent {
				t.Errorf("from %s to %s, want from %d to %d", plan.Current.Label(), plan.Target.Label(), tc.wantCurrent, tc.wantTarget)
			}
			if got := imageTag(plan.Target.Config); got != tc.wantImage {
				t.Errorf("target imageTag %q, want %q", got, tc.wantImage)
			}
			if v := plan.Config[ReuseImageKey].Value; v == nil || *v != "true" || imageTag(plan.Config) != tc.wantImage {
				t.Errorf("the plan writes reuseImage %v, imageTag %q; want true and the target's tag", v, imageTag(plan.Config))
			}
			if strings.Join(plan.Skipped, "|") != strings.Join(tc.wantSkipped, "|") {
				t.Errorf("skipped %q, want %q", plan.Skipped, tc.wantSkipped)
			}
		})
	}
}

// imageTag is the value of the imageTag key of cfg, whatever the project
// (relaygate:, or histprobe: in the recorded DIY histories).
func imageTag(cfg map[string]ConfigValue) string {
	for k, v := range cfg {
		if strings.HasSuffix(k, ":imageTag") && v.Value != nil {
			return *v.Value
		}
	}
	return ""
}

func fixture(name string) func(*testing.T) []Update {
	return func(t *testing.T) []Update { return loadHistory(t, name) }
}

// TestParseHistoryKeepsStructuredConfig: lists and maps come back with their
// objectValue, which `config set-all --json` needs to restore them as
// structured values rather than as strings.
func TestParseHistoryKeepsStructuredConfig(t *testing.T) {
	h := loadHistory(t, "several-successes.json")
	if h[0].Version != 12 || h[len(h)-1].Version != 8 {
		t.Fatalf("versions %d..%d, want newest first 12..8", h[0].Version, h[len(h)-1].Version)
	}
	models := h[0].Config["relaygate:models"]
	list, ok := models.ObjectValue.([]any)
	if !ok || len(list) != 2 || models.Value == nil || !strings.HasPrefix(*models.Value, `[{"name":"gpt-4.1"`) {
		t.Errorf("relaygate:models = %+v, want its JSON text and a 2-element objectValue", models)
	}
	if key := h[0].Config["relaygate:gatewayApiKey"]; !key.Secret || key.Value == nil {
		t.Errorf("gatewayApiKey = %+v, want a decrypted secret", key)
	}
	if _, err := ParseHistory([]byte(`{"version":1}`)); err == nil {
		t.Error("ParseHistory accepted an object; the CLI prints a list")
	}
}

// TestNumbered: an update's Number is its version where the backend gives
// versions, and on a DIY backend, whose every version is 0, its place from
// the oldest, so that it is the same however much history has been added
// since; Label names it for the operator either way.
func TestNumbered(t *testing.T) {
	for _, tc := range []struct {
		fixture     string
		wantNumbers []int
		wantLabel   string // of the newest
	}{
		{"several-successes.json", []int{12, 11, 10, 9, 8}, "update 12"},
		{"diy-up-failed-unrecorded.json", []int{2, 1}, "update #2 of 2026-12-03T10:06:30.000Z"},
		{"diy-after-two-rollbacks.json", []int{5, 4, 3, 2, 1}, "update #5 of 2026-12-03T10:10:07.000Z"},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			h := numbered(loadHistory(t, tc.fixture))
			var got []int
			for _, u := range h {
				got = append(got, u.Number)
			}
			if !slices.Equal(got, tc.wantNumbers) {
				t.Errorf("numbers %v, want %v", got, tc.wantNumbers)
			}
			if l := h[0].Label(); l != tc.wantLabel {
				t.Errorf("newest is %q, want %q", l, tc.wantLabel)
			}
		})
	}
	// A DIY update keeps its number as the history grows.
	h := numbered(loadHistory(t, "diy-after-two-rollbacks.json"))
	older := numbered(loadHistory(t, "diy-failed-last.json"))
	for i, u := range older {
		if grown := h[len(h)-len(older)+i]; grown.Number != u.Number || grown.StartTime != u.StartTime {
			t.Errorf("%s became %s two updates later", u.Label(), grown.Label())
		}
	}
}

// TestRollbackMessage: a rollback's message names the updates so that a
// later rollback finds them again, also in the quotes the Automation API
// puts around it, and on a DIY backend by their number from the oldest.
func TestRollbackMessage(t *testing.T) {
	cloud := numbered(loadHistory(t, "failed-last.json"))
	diy := numbered(loadHistory(t, "diy-failed-last.json"))
	for _, tc := range []struct {
		from, to         Update
		want             string
		wantFrom, wantTo int
	}{
		{cloud[0], cloud[1], "rollback of dev: v7 -> v6 (restores the configuration of update 6)", 7, 6},
		{diy[0], diy[1], "rollback of dev: #3 -> #2 (restores the configuration of update #2 of 2026-12-03T10:06:30.000Z)", 3, 2},
	} {
		msg := Message("dev", tc.from, tc.to)
		if msg != tc.want {
			t.Errorf("Message = %q, want %q", msg, tc.want)
		}
		for _, recorded := range []string{msg, strconv.Quote(msg)} {
			from, to, ok := Update{Message: recorded}.rollback()
			if !ok || from != tc.wantFrom || to != tc.wantTo {
				t.Errorf("rollback() of %s = %d, %d, %v; want %d, %d", recorded, from, to, ok, tc.wantFrom, tc.wantTo)
			}
		}
	}
	// The real message, as the CLI recorded it through the Automation API.
	h := loadHistory(t, "diy-after-rollback.json")
	if from, to, ok := h[0].rollback(); !ok || from != 3 || to != 2 {
		t.Errorf("rollback() of the recorded %s = %d, %d, %v; want 3, 2", h[0].Message, from, to, ok)
	}
	if _, _, ok := (Update{Message: `"deploy sha-1"`}).rollback(); ok {
		t.Error("a deploy's message read as a rollback's")
	}
}

func TestDescribeNeverShowsSecrets(t *testing.T) {
	h := loadHistory(t, "several-successes.json")
	plan, err := Choose("dev", h)
	if err != nil {
		t.Fatal(err)
	}
	current := h[0].Config
	rotated := "rotated-key-0123456789abcdef"
	current["relaygate:gatewayApiKey"] = ConfigValue{Value: &rotated, Secret: true}
	text := plan.Describe(current)
	for _, want := range []string{
		"from update 12 (succeeded", "to update 10 (succeeded",
		`config relaygate:imageTag: "sha-c0ffee1" -> "sha-b16b00b"`,
		`config relaygate:latencyBudgetP95Ms: "1200" -> "1500"`,
		"config relaygate:models: (changed) -> (changed)",
		"config relaygate:gatewayApiKey: (secret) -> (secret, changed)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("plan description lacks %q:\n%s", want, text)
		}
	}
	for _, u := range h {
		for k, v := range u.Config {
			if v.Secret && strings.Contains(text, *v.Value) {
				t.Errorf("plan description shows the secret %s", k)
			}
		}
	}
	if strings.Contains(text, rotated) {
		t.Error("plan description shows the current secret")
	}
	if strings.Contains(text, "holysheepApiKey") {
		t.Errorf("plan lists an unchanged key:\n%s", text)
	}
}
