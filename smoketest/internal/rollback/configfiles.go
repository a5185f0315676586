package rollback

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/config"
	"github.com/pulumi/pulumi/sdk/v3/go/common/tokens"
	"github.com/pulumi/pulumi/sdk/v3/go/common/workspace"
)

// ConfigFiles is where a stack's configuration comes from. The history's
// `config` of an update, like `pulumi config --json`, is the merged
// configuration: the stack file's values and, for every key the stack file
// does not set, the project's default. Restoring that merge as it is would
// write every default into Pulumi.<stack>.yaml, and a later change of a
// default in Pulumi.yaml would no longer reach the stack; ConfigFiles tells
// the defaults apart (see [ConfigFiles.Split]).
type ConfigFiles struct {
	// Defaults are the project's defaults (the `config:` of Pulumi.yaml),
	// by full key ("relaygate:imageTag"), as the CLI merges them: scalars
	// as text, arrays and objects as JSON with their ObjectValue.
	Defaults map[string]ConfigValue
	// StackKeys are the keys the stack file (Pulumi.<stack>.yaml) sets
	// itself. Nil when not known: every key of the current configuration
	// then counts as set.
	StackKeys map[string]bool
}

// LoadConfigFiles reads the defaults of the Pulumi project in projectDir
// (its Pulumi.yaml) and the keys that stack's stack file sets. A stack
// without a stack file sets none.
func LoadConfigFiles(projectDir, stack string) (ConfigFiles, error) {
	projPath := filepath.Join(projectDir, "Pulumi.yaml")
	proj, err := workspace.LoadProject(projPath)
	if err != nil {
		return ConfigFiles{}, fmt.Errorf("read the project's defaults: %w", err)
	}
	defaults, err := projectDefaults(proj)
	if err != nil {
		return ConfigFiles{}, fmt.Errorf("the defaults of %s: %w", projPath, err)
	}
	stackPath := workspace.ProjectStackPath(projPath, proj, tokens.QName(stack))
	ps, err := workspace.LoadProjectStack(nil, proj, stackPath)
	if err != nil {
		return ConfigFiles{}, fmt.Errorf("read the stack file of %s: %w", stack, err)
	}
	keys := make(map[string]bool, len(ps.Config))
	for k := range ps.Config {
		keys[k.String()] = true
	}
	return ConfigFiles{Defaults: defaults, StackKeys: keys}, nil
}

// projectDefaults is the project's config defaults (or, for another
// namespace's key, its value) as the CLI merges them into a stack's
// configuration (pkg/workspace's mergeConfig): a string, int or bool as
// its text, anything else as JSON.
func projectDefaults(proj *workspace.Project) (map[string]ConfigValue, error) {
	out := map[string]ConfigValue{}
	for name, t := range proj.Config {
		raw := t.Default
		if raw == nil {
			raw = t.Value
		}
		if raw == nil {
			continue
		}
		key := string(proj.Name) + ":" + name
		if strings.Contains(name, ":") {
			k, err := config.ParseKey(name)
			if err != nil {
				return nil, err
			}
			key = k.String()
		}
		v, err := defaultValue(raw)
		if err != nil {
			return nil, fmt.Errorf("default of %s: %w", key, err)
		}
		out[key] = v
	}
	return out, nil
}

func defaultValue(raw any) (ConfigValue, error) {
	switch raw.(type) {
	case string, int, bool:
		s := fmt.Sprintf("%v", raw)
		return ConfigValue{Value: &s}, nil
	}
	simple, err := workspace.SimplifyMarshalledValue(raw)
	if err != nil {
		return ConfigValue{}, err
	}
	b, err := json.Marshal(simple)
	if err != nil {
		return ConfigValue{}, err
	}
	var obj any
	if err := json.Unmarshal(b, &obj); err != nil {
		return ConfigValue{}, err
	}
	s := string(b)
	return ConfigValue{Value: &s, ObjectValue: obj}, nil
}

// sets reports whether the stack file sets key itself.
func (f ConfigFiles) sets(key string) bool { return f.StackKeys == nil || f.StackKeys[key] }

// isDefault reports whether v is the project's default for key. A secret
// never is: it must stay encrypted in the stack file.
func (f ConfigFiles) isDefault(key string, v ConfigValue) bool {
	d, ok := f.Defaults[key]
	if !ok || v.Secret || v.Value == nil {
		return false
	}
	if d.ObjectValue == nil {
		return v.ObjectValue == nil && *v.Value == *d.Value
	}
	got := v.ObjectValue
	if got == nil && json.Unmarshal([]byte(*v.Value), &got) != nil {
		return false
	}
	return sameJSON(got, d.ObjectValue)
}

// sameJSON compares two structured values by their JSON, so that numbers
// decoded from YAML (int) and from JSON (float64) compare equal.
func sameJSON(a, b any) bool {
	var ca, cb any
	for _, p := range []struct {
		v   any
		out *any
	}{{a, &ca}, {b, &cb}} {
		j, err := json.Marshal(p.v)
		if err != nil || json.Unmarshal(j, p.out) != nil {
			return false
		}
	}
	return reflect.DeepEqual(ca, cb)
}

// Effective completes cfg, a configuration to restore, with what the stack
// keeps whatever is restored: the keys of current (the merged
// configuration the stack has now) that its stack file does not set, such
// as a default added to Pulumi.yaml since the update cfg comes from. The
// stack goes on getting them from the project, so they are part of the
// configuration the rollback deploys.
func (f ConfigFiles) Effective(cfg, current map[string]ConfigValue) {
	if f.StackKeys == nil {
		return
	}
	for k, v := range current {
		if _, ok := cfg[k]; !ok && !f.sets(k) {
			cfg[k] = v
		}
	}
}

// Split turns cfg, the configuration a rollback restores (merged, as the
// history holds it), into what to write into the stack file and which of
// its keys to remove, given current, the configuration the stack has now:
//
//   - a value that is the project's default is not written where the stack
//     file does not set the key, so that the default goes on applying (and
//     a later change of it in Pulumi.yaml reaches the stack);
//   - where the stack file sets such a key to another value, the key is
//     removed and the default applies again: the history cannot tell a
//     default from a value set to the default, and most are defaults;
//   - where the stack file already sets the key to that very value, it is
//     left as it is;
//   - a key of the stack file that cfg lacks is removed;
//   - everything else is written.
func (f ConfigFiles) Split(cfg, current map[string]ConfigValue) (write map[string]ConfigValue, remove []string) {
	write = make(map[string]ConfigValue, len(cfg))
	for k, v := range cfg {
		if !f.isDefault(k, v) {
			write[k] = v
			continue
		}
		if now, ok := current[k]; f.sets(k) && (!ok || now.Secret || now.text() != v.text()) {
			remove = append(remove, k)
		}
	}
	for k := range current {
		if _, keep := cfg[k]; !keep && f.sets(k) {
			remove = append(remove, k)
		}
	}
	slices.Sort(remove)
	return write, remove
}
