package rollback

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// The diy-defaults project (testdata/README.md): its history is the real
// CLI's, and every update's config holds every default of its Pulumi.yaml.
const defaultsProject = "testdata/diy-defaults"

func str(v string) *string { return &v }

func plain(v string) ConfigValue { return ConfigValue{Value: &v} }

// defaultsFiles is LoadConfigFiles of the diy-defaults project, whose stack
// file is as update #2 left it: k, imageTag and hostCount set.
func defaultsFiles(t *testing.T) ConfigFiles {
	t.Helper()
	f, err := LoadConfigFiles(defaultsProject, "local")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestLoadConfigFiles(t *testing.T) {
	f := defaultsFiles(t)
	want := map[string]string{
		"histprobe:imageTag":     "latest",
		"histprobe:cacheTtl":     "1h",
		"histprobe:hostCount":    "1",
		"histprobe:loadBalancer": "false",
		"histprobe:allowedCidrs": "[]",
		"histprobe:retry":        `{"attempts":3,"backoffMin":"200ms"}`,
		"histprobe:upstreams":    `[{"name":"a","timeout":"180s"}]`,
	}
	got := map[string]string{}
	for k, v := range f.Defaults {
		got[k] = v.text()
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults\n got %v\nwant %v", got, want)
	}
	for _, k := range []string{"histprobe:allowedCidrs", "histprobe:retry", "histprobe:upstreams"} {
		if f.Defaults[k].ObjectValue == nil {
			t.Errorf("structured default %s has no ObjectValue", k)
		}
	}
	wantKeys := map[string]bool{"histprobe:k": true, "histprobe:imageTag": true, "histprobe:hostCount": true}
	if !reflect.DeepEqual(f.StackKeys, wantKeys) {
		t.Errorf("stack file keys %v, want %v", f.StackKeys, wantKeys)
	}

	// The defaults are as the CLI merged them: every key update #1's stack
	// file did not set (it set k, imageTag and cacheTtl) is recorded with
	// the very default.
	h := loadHistory(t, "diy-defaults/history.json")
	setThen := map[string]bool{"histprobe:k": true, "histprobe:imageTag": true, "histprobe:cacheTtl": true}
	for k, v := range h[1].Config {
		if is := f.isDefault(k, v); is == setThen[k] {
			t.Errorf("update #1's %s = %s: isDefault %v, want %v", k, v.text(), is, !setThen[k])
		}
	}
}

// TestLoadConfigFilesKeysAndPlaces: keys of another namespace keep it, a
// stack file's short keys get the project's, stackConfigDir is followed,
// and a stack without a stack file sets nothing.
func TestLoadConfigFilesKeysAndPlaces(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("Pulumi.yaml", `name: p
runtime: go
stackConfigDir: stacks
config:
  aws:region:
    value: us-east-1
  ratio:
    default: 1.5
  name:
    type: string
    default: x
  required:
    type: string
`)
	write("stacks/Pulumi.dev.yaml", "config:\n  ratio: \"2\"\n  aws:profile: ci\n")
	f, err := LoadConfigFiles(dir, "dev")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.StackKeys, map[string]bool{"p:ratio": true, "aws:profile": true}) {
		t.Errorf("stack file keys %v", f.StackKeys)
	}
	if len(f.Defaults) != 3 || f.Defaults["aws:region"].text() != "us-east-1" || f.Defaults["p:name"].text() != "x" {
		t.Errorf("defaults %v", f.Defaults)
	}
	// The CLI merges a float as a structured value; either form compares.
	if !f.isDefault("p:ratio", ConfigValue{Value: str("1.5"), ObjectValue: 1.5}) || !f.isDefault("p:ratio", plain("1.5")) {
		t.Errorf("1.5 is not the default %+v", f.Defaults["p:ratio"])
	}

	none, err := LoadConfigFiles(dir, "prod")
	if err != nil {
		t.Fatal(err)
	}
	if none.StackKeys == nil || len(none.StackKeys) != 0 {
		t.Errorf("a stack without a stack file sets %v, want none (and known)", none.StackKeys)
	}
	if _, err := LoadConfigFiles(t.TempDir(), "dev"); err == nil {
		t.Error("no error without a Pulumi.yaml")
	}
}

// TestLoadConfigFilesOfThisProject reads the repository's own Pulumi.yaml.
func TestLoadConfigFilesOfThisProject(t *testing.T) {
	f, err := LoadConfigFiles(filepath.Join("..", "..", ".."), "dev")
	if err != nil {
		t.Fatal(err)
	}
	if f.Defaults[imageTagKey].text() != "latest" || f.Defaults[ReuseImageKey].text() != "false" {
		t.Errorf("imageTag %s, reuseImage %s", f.Defaults[imageTagKey].text(), f.Defaults[ReuseImageKey].text())
	}
	if v := f.Defaults["relaygate:upstreams"]; v.ObjectValue == nil {
		t.Errorf("upstreams default %+v is not structured", v)
	}
	for _, k := range []string{"relaygate:models", "relaygate:gatewayApiKey"} {
		if _, ok := f.Defaults[k]; ok {
			t.Errorf("%s has no default in Pulumi.yaml, got one", k)
		}
	}
}

func TestIsDefault(t *testing.T) {
	f := ConfigFiles{Defaults: map[string]ConfigValue{}}
	for k, raw := range map[string]any{
		"p:s": "latest", "p:empty": "", "p:n": 1, "p:b": false,
		"p:list": []any{}, "p:obj": map[string]any{"attempts": 3, "backoffMin": "200ms"},
		"p:objs": []any{map[string]any{"name": "a", "timeout": "180s"}},
	} {
		v, err := defaultValue(raw)
		if err != nil {
			t.Fatal(err)
		}
		f.Defaults[k] = v
	}
	for _, tc := range []struct {
		name string
		key  string
		v    ConfigValue
		want bool
	}{
		{"same string", "p:s", plain("latest"), true},
		{"other string", "p:s", plain("sha-1"), false},
		{"empty string", "p:empty", plain(""), true},
		{"integer as text", "p:n", plain("1"), true},
		{"other integer", "p:n", plain("2"), false},
		{"boolean as text", "p:b", plain("false"), true},
		{"boolean differently spelt", "p:b", plain("False"), false},
		{"empty list", "p:list", ConfigValue{Value: str("[]"), ObjectValue: []any{}}, true},
		{"empty list, text only", "p:list", plain("[]"), true},
		{"non-empty list", "p:list", ConfigValue{Value: str(`["10.0.0.0/8"]`), ObjectValue: []any{"10.0.0.0/8"}}, false},
		{"object, numbers from JSON", "p:obj", ConfigValue{Value: str(`{"backoffMin":"200ms","attempts":3}`),
			ObjectValue: map[string]any{"backoffMin": "200ms", "attempts": float64(3)}}, true},
		{"object, another value", "p:obj", ConfigValue{Value: str(`{"attempts":4,"backoffMin":"200ms"}`),
			ObjectValue: map[string]any{"attempts": float64(4), "backoffMin": "200ms"}}, false},
		{"object, a key more", "p:obj", ConfigValue{Value: str(`{"attempts":3,"backoffMin":"200ms","backoffMax":"10s"}`),
			ObjectValue: map[string]any{"attempts": float64(3), "backoffMin": "200ms", "backoffMax": "10s"}}, false},
		{"list of objects", "p:objs", ConfigValue{Value: str(`[{"name":"a","timeout":"180s"}]`),
			ObjectValue: []any{map[string]any{"name": "a", "timeout": "180s"}}}, true},
		{"structured value of a scalar default", "p:s", ConfigValue{Value: str(`"latest"`), ObjectValue: "latest"}, false},
		{"text that is no JSON, structured default", "p:list", plain("[oops"), false},
		{"a secret, even equal", "p:s", ConfigValue{Value: str("latest"), Secret: true}, false},
		{"an undecrypted value", "p:s", ConfigValue{}, false},
		{"a key without default", "p:other", plain("latest"), false},
	} {
		if got := f.isDefault(tc.key, tc.v); got != tc.want {
			t.Errorf("%s: isDefault(%s, %s) = %v, want %v", tc.name, tc.key, tc.v.text(), got, tc.want)
		}
	}
}

func TestSplit(t *testing.T) {
	defaults := map[string]ConfigValue{
		"p:tag": plain("latest"), "p:ttl": plain("1h"), "p:n": plain("1"),
		"p:list": {Value: str("[]"), ObjectValue: []any{}},
	}
	secret := ConfigValue{Value: str("s3cret"), Secret: true}
	for _, tc := range []struct {
		name       string
		files      ConfigFiles
		cfg, now   map[string]ConfigValue
		wantWrite  []string
		wantRemove []string
	}{
		{
			name:  "defaults the stack file does not set stay out of it",
			files: ConfigFiles{Defaults: defaults, StackKeys: map[string]bool{"p:tag": true, "p:k": true}},
			cfg: map[string]ConfigValue{"p:tag": plain("sha-1"), "p:k": secret, "p:ttl": plain("1h"), "p:n": plain("1"),
				"p:list": {Value: str("[]"), ObjectValue: []any{}}},
			now: map[string]ConfigValue{"p:tag": plain("sha-2"), "p:k": secret, "p:ttl": plain("1h"), "p:n": plain("1"),
				"p:list": {Value: str("[]"), ObjectValue: []any{}}},
			wantWrite: []string{"p:k", "p:tag"},
		},
		{
			name:      "a value other than the default is written",
			files:     ConfigFiles{Defaults: defaults, StackKeys: map[string]bool{"p:tag": true}},
			cfg:       map[string]ConfigValue{"p:tag": plain("sha-1"), "p:ttl": plain("2h")},
			now:       map[string]ConfigValue{"p:tag": plain("sha-2"), "p:ttl": plain("1h")},
			wantWrite: []string{"p:tag", "p:ttl"},
		},
		{
			name:       "set now, the default then: removed, the default applies again",
			files:      ConfigFiles{Defaults: defaults, StackKeys: map[string]bool{"p:tag": true, "p:n": true}},
			cfg:        map[string]ConfigValue{"p:tag": plain("sha-1"), "p:n": plain("1")},
			now:        map[string]ConfigValue{"p:tag": plain("sha-2"), "p:n": plain("3")},
			wantWrite:  []string{"p:tag"},
			wantRemove: []string{"p:n"},
		},
		{
			name:      "pinned to the default now: left as it is",
			files:     ConfigFiles{Defaults: defaults, StackKeys: map[string]bool{"p:tag": true, "p:ttl": true}},
			cfg:       map[string]ConfigValue{"p:tag": plain("sha-1"), "p:ttl": plain("1h")},
			now:       map[string]ConfigValue{"p:tag": plain("sha-2"), "p:ttl": plain("1h")},
			wantWrite: []string{"p:tag"},
		},
		{
			name:       "a key of the stack file the target lacked: removed",
			files:      ConfigFiles{Defaults: defaults, StackKeys: map[string]bool{"p:tag": true, "p:extra": true}},
			cfg:        map[string]ConfigValue{"p:tag": plain("sha-1")},
			now:        map[string]ConfigValue{"p:tag": plain("sha-2"), "p:extra": plain("x"), "p:ttl": plain("1h")},
			wantWrite:  []string{"p:tag"},
			wantRemove: []string{"p:extra"},
		},
		{
			name:      "a secret equal to a default is written (encrypted)",
			files:     ConfigFiles{Defaults: defaults, StackKeys: map[string]bool{}},
			cfg:       map[string]ConfigValue{"p:tag": {Value: str("latest"), Secret: true}},
			now:       map[string]ConfigValue{"p:tag": plain("latest")},
			wantWrite: []string{"p:tag"},
		},
		{
			name:       "nothing known of the files: everything written, the rest removed",
			cfg:        map[string]ConfigValue{"p:tag": plain("latest"), "p:ttl": plain("1h")},
			now:        map[string]ConfigValue{"p:tag": plain("sha-2"), "p:n": plain("1")},
			wantWrite:  []string{"p:tag", "p:ttl"},
			wantRemove: []string{"p:n"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write, remove := tc.files.Split(tc.cfg, tc.now)
			if got := slices.Sorted(maps.Keys(write)); !slices.Equal(got, tc.wantWrite) {
				t.Errorf("writes %v, want %v", got, tc.wantWrite)
			}
			for k, v := range write {
				if !reflect.DeepEqual(v, tc.cfg[k]) {
					t.Errorf("writes %s = %+v, want %+v", k, v, tc.cfg[k])
				}
			}
			if !slices.Equal(remove, tc.wantRemove) {
				t.Errorf("removes %v, want %v", remove, tc.wantRemove)
			}
		})
	}
}

// TestRunLeavesDefaultsToTheProject: on the real history of a project with
// defaults, whose every update records every default, a rollback writes
// into the stack file only what that file must hold. Before, it wrote every
// default, and a later change of one in Pulumi.yaml no longer reached the
// stack.
func TestRunLeavesDefaultsToTheProject(t *testing.T) {
	type check struct {
		name string
		// edit changes the current configuration and the files before the
		// rollback.
		edit        func(now map[string]ConfigValue, f *ConfigFiles)
		wantWrite   []string
		wantRemove  []string
		wantLines   []string
		unwantLines []string
	}
	base := []string{"histprobe:cacheTtl", "histprobe:imageTag", "histprobe:k", ReuseImageKey}
	for _, tc := range []check{
		{
			name:      "as recorded",
			wantWrite: base,
			// hostCount 3 was set after update #1, which had the default.
			wantRemove: []string{"histprobe:hostCount"},
			wantLines: []string{`config histprobe:imageTag: "sha-2" -> "sha-1"`, `config histprobe:cacheTtl: "1h" -> "2h"`,
				`config histprobe:hostCount: "3" -> "1"`},
			unwantLines: []string{"allowedCidrs", "loadBalancer", "retry", "upstreams"},
		},
		{
			name:      "the stack file pins a default",
			edit:      func(_ map[string]ConfigValue, f *ConfigFiles) { f.StackKeys["histprobe:loadBalancer"] = true },
			wantWrite: base, wantRemove: []string{"histprobe:hostCount"},
			unwantLines: []string{"loadBalancer"},
		},
		{
			name: "a default added to Pulumi.yaml since update #1",
			edit: func(now map[string]ConfigValue, f *ConfigFiles) {
				now["histprobe:newKey"] = plain("on")
				f.Defaults["histprobe:newKey"] = plain("on")
			},
			wantWrite: base, wantRemove: []string{"histprobe:hostCount"},
			unwantLines: []string{"newKey"},
		},
		{
			name: "a key set by hand since",
			edit: func(now map[string]ConfigValue, f *ConfigFiles) {
				now["histprobe:extra"] = plain("x")
				f.StackKeys["histprobe:extra"] = true
			},
			wantWrite: base, wantRemove: []string{"histprobe:extra", "histprobe:hostCount"},
			wantLines: []string{`config histprobe:extra: removed (was "x")`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := loadHistory(t, "diy-defaults/history.json")
			// `pulumi config --json` shows the merged configuration, as
			// update #2 recorded it: the stack file has not changed since.
			now := copyConfig(h[0].Config)
			files := defaultsFiles(t)
			if tc.edit != nil {
				tc.edit(now, &files)
			}
			s := &recordedStack{history: h, config: now, files: files}
			var out bytes.Buffer
			plan, err := Run(t.Context(), s, &out)
			if err != nil {
				t.Fatal(err)
			}
			if plan.Target.Number != 1 {
				t.Fatalf("rolled back to %s, want update #1", plan.Target.Label())
			}
			if got := slices.Sorted(maps.Keys(s.set)); !slices.Equal(got, tc.wantWrite) {
				t.Errorf("wrote %v, want %v (the defaults stay in Pulumi.yaml)", got, tc.wantWrite)
			}
			for k, want := range map[string]string{"histprobe:imageTag": "sha-1", "histprobe:cacheTtl": "2h", "histprobe:k": "v", ReuseImageKey: "true"} {
				if v := s.set[k]; v.text() != want || v.Secret != (k == "histprobe:k") {
					t.Errorf("wrote %s = %+v, want %q", k, v, want)
				}
			}
			if !slices.Equal(s.removed, tc.wantRemove) {
				t.Errorf("removed %v, want %v", s.removed, tc.wantRemove)
			}
			for _, want := range tc.wantLines {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
			for _, unwant := range tc.unwantLines {
				if strings.Contains(out.String(), unwant) {
					t.Errorf("output mentions %q, which the rollback does not change:\n%s", unwant, out.String())
				}
			}
		})
	}
}
