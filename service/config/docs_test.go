package config

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The reference of every key, which this file holds to the loader's types.
var configurationDoc = filepath.Join("..", "..", "docs", "configuration.md")

// yamlName is a field's key in the file, "" for fields the file cannot set.
func yamlName(f reflect.StructField) (name string, inline bool) {
	parts := strings.Split(f.Tag.Get("yaml"), ",")
	if slices.Contains(parts[1:], "inline") {
		return "", true
	}
	if parts[0] == "-" || !f.IsExported() {
		return "", false
	}
	return parts[0], false
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// isMapping says whether a type is written in YAML as a mapping of keys the
// loader knows (a struct with yaml-tagged fields), rather than one value.
func isMapping(t reflect.Type) bool {
	t = deref(t)
	if t.Kind() != reflect.Struct {
		return false
	}
	for i := range t.NumField() {
		if name, inline := yamlName(t.Field(i)); name != "" || inline {
			return true
		}
	}
	return false
}

// keyPaths walks the loader's types as the loader does (yaml tags, through
// pointers, lists and nested mappings) and returns every key path: the
// leaves, which hold values, and all, which adds the mappings and lists
// that hold them. A list's entries are written `name[]`, a map's `name.*`.
func keyPaths(t reflect.Type, prefix string, leaves, all map[string]bool) {
	t = deref(t)
	for i := range t.NumField() {
		f := t.Field(i)
		name, inline := yamlName(f)
		if inline {
			keyPaths(f.Type, prefix, leaves, all)
			continue
		}
		if name == "" {
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		all[path] = true
		ft := deref(f.Type)
		switch {
		case isMapping(ft):
			keyPaths(ft, path, leaves, all)
		case (ft.Kind() == reflect.Slice || ft.Kind() == reflect.Array) && isMapping(ft.Elem()):
			keyPaths(ft.Elem(), path+"[]", leaves, all)
		case ft.Kind() == reflect.Map && isMapping(ft.Elem()):
			keyPaths(ft.Elem(), path+".*", leaves, all)
		default:
			leaves[path] = true
		}
	}
}

// docRow is one row of a key table in configuration.md.
type docRow struct {
	line    int
	key     string
	cells   []string
	defCell string
}

var keyCell = regexp.MustCompile("^`([^`]+)`$")

// splitRow splits a Markdown table row into its cells; `\|` is a pipe
// inside a cell.
func splitRow(line string) []string {
	line = strings.TrimSpace(line)
	line = strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|")
	line = strings.ReplaceAll(line, `\|`, "\x00")
	cells := strings.Split(line, "|")
	for i, c := range cells {
		cells[i] = strings.TrimSpace(strings.ReplaceAll(c, "\x00", "|"))
	}
	return cells
}

// documentedKeys reads the rows of every table whose first column is
// headed "key": the keys configuration.md documents.
func documentedKeys(t *testing.T, doc string) []docRow {
	t.Helper()
	lines := strings.Split(doc, "\n")
	var rows []docRow
	var header []string
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if !strings.HasPrefix(line, "|") {
			header = nil
			continue
		}
		if header == nil {
			// A table starts with its header and a --- separator.
			if i+1 < len(lines) && strings.Contains(lines[i+1], "---") {
				header = splitRow(line)
				i++
			}
			continue
		}
		if header[0] != "key" {
			continue
		}
		cells := splitRow(line)
		m := keyCell.FindStringSubmatch(cells[0])
		if m == nil {
			t.Errorf("configuration.md:%d: a key table's row does not start with one `key`: %s", i+1, line)
			continue
		}
		r := docRow{line: i + 1, key: m[1], cells: cells}
		if d := slices.Index(header, "default"); d >= 0 && d < len(cells) {
			r.defCell = cells[d]
		}
		rows = append(rows, r)
	}
	return rows
}

func readConfigurationDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(configurationDoc)
	if err != nil {
		t.Fatalf("the configuration reference: %v", err)
	}
	return string(b)
}

// TestConfigurationDocCoversEveryKey: docs/configuration.md lists every key
// the loader accepts, and only those, so the reference cannot drift from
// the code: a key added to Config fails here until it is documented, and a
// key removed fails until its row goes.
func TestConfigurationDocCoversEveryKey(t *testing.T) {
	t.Parallel()
	leaves, all := map[string]bool{}, map[string]bool{}
	keyPaths(reflect.TypeOf(Config{}), "", leaves, all)
	if len(leaves) < 40 {
		t.Fatalf("found only %d keys in Config; the walk is broken: %v", len(leaves), leaves)
	}
	rows := documentedKeys(t, readConfigurationDoc(t))
	documented := map[string]int{}
	for _, r := range rows {
		if prev, ok := documented[r.key]; ok {
			t.Errorf("configuration.md:%d: `%s` is documented twice (also line %d)", r.line, r.key, prev)
		}
		documented[r.key] = r.line
		if !all[r.key] {
			t.Errorf("configuration.md:%d: `%s` is not a key of the gateway's config (service/config.Config); remove or rename the row", r.line, r.key)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(leaves)) {
		if _, ok := documented[k]; ok {
			continue
		}
		t.Errorf("key `%s` of service/config.Config is not in docs/configuration.md; add a row for it to the table of its section", k)
	}
}

func TestKeyPaths(t *testing.T) {
	t.Parallel()
	type inner struct {
		A int      `yaml:"a"`
		D Duration `yaml:"d"`
	}
	type shared struct {
		S string `yaml:"s"`
	}
	type root struct {
		shared  `yaml:",inline"`
		Plain   string           `yaml:"plain"`
		List    []string         `yaml:"list"`
		Nested  inner            `yaml:"nested"`
		Ptr     *inner           `yaml:"ptr"`
		Entries []inner          `yaml:"entries"`
		ByName  map[string]inner `yaml:"by_name"`
		Skipped string           `yaml:"-"`
		hidden  string
	}
	leaves, all := map[string]bool{}, map[string]bool{}
	keyPaths(reflect.TypeOf(root{}), "", leaves, all)
	wantLeaves := []string{"s", "plain", "list", "nested.a", "nested.d", "ptr.a", "ptr.d",
		"entries[].a", "entries[].d", "by_name.*.a", "by_name.*.d"}
	slices.Sort(wantLeaves)
	if got := slices.Sorted(maps.Keys(leaves)); !slices.Equal(got, wantLeaves) {
		t.Errorf("leaves %q, want %q", got, wantLeaves)
	}
	for _, k := range []string{"nested", "ptr", "entries", "by_name"} {
		if !all[k] || leaves[k] {
			t.Errorf("%s: want a mapping or list key, not a leaf (all %v)", k, all[k])
		}
	}
	_ = root{}.hidden
}

// A default written as one value, optionally followed by a remark in
// parentheses: `30s`, `0` (off). Anything else ("by host", "`10s`, or
// `timeout` when shorter") describes a default that depends on other keys.
var plainDefault = regexp.MustCompile("^`([^`]*)`(?: \\(.*\\))?$")

// TestConfigurationDocDefaults: where configuration.md gives a key's
// default as one value, loading a config that leaves the key out gives that
// value.
func TestConfigurationDocDefaults(t *testing.T) {
	t.Parallel()
	// The smallest config the loader accepts, with CORS and the ledger on
	// (their defaults apply only then).
	cfg, err := Parse([]byte(`
upstreams: [{name: relay, base_url: "https://relay.example/v1"}]
models: [{name: m, route: [relay]}]
cors: {allowed_origins: ["*"]}
ledger: {postgres_url: "postgres://relaygate@127.0.0.1:5432/relaygate"}
`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, r := range documentedKeys(t, readConfigurationDoc(t)) {
		m := plainDefault.FindStringSubmatch(r.defCell)
		if m == nil {
			continue
		}
		v, ok := valueAt(reflect.ValueOf(cfg).Elem(), r.key)
		if !ok {
			continue
		}
		if err := sameValue(v, m[1]); err != nil {
			t.Errorf("configuration.md:%d: `%s` defaults to `%s`, but the loader gives %v: %v", r.line, r.key, m[1], v.Interface(), err)
		}
		checked++
	}
	t.Logf("%d documented defaults match the loader's", checked)
	if checked < 20 {
		t.Errorf("only %d documented defaults could be checked; the default column or its parsing changed", checked)
	}
}

// valueAt follows a documented key path through a loaded Config, taking a
// list's first entry for `[]`; false where nothing is there to compare.
func valueAt(v reflect.Value, path string) (reflect.Value, bool) {
	for _, seg := range strings.Split(path, ".") {
		name, list := strings.CutSuffix(seg, "[]")
		for v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return v, false
			}
			v = v.Elem()
		}
		if v.Kind() != reflect.Struct {
			return v, false
		}
		found := false
		for i := range v.NumField() {
			if n, _ := yamlName(v.Type().Field(i)); n == name {
				v, found = v.Field(i), true
				break
			}
		}
		if !found {
			return v, false
		}
		if list {
			if v.Kind() != reflect.Slice || v.Len() == 0 {
				return v, false
			}
			v = v.Index(0)
		}
	}
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return v, false
		}
		v = v.Elem()
	}
	return v, true
}

// sameValue compares a loaded value with the documented text of it.
func sameValue(v reflect.Value, doc string) error {
	if v.Type() == reflect.TypeOf(Duration(0)) {
		d, err := time.ParseDuration(doc)
		if err != nil {
			return err
		}
		if d != time.Duration(v.Int()) {
			return fmt.Errorf("%s is not %s", time.Duration(v.Int()), d)
		}
		return nil
	}
	var want any
	var err error
	switch v.Kind() {
	case reflect.String:
		want = doc
	case reflect.Bool:
		want, err = strconv.ParseBool(doc)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		var n int64
		n, err = strconv.ParseInt(doc, 10, 64)
		want = reflect.ValueOf(n).Convert(v.Type()).Interface()
	case reflect.Float32, reflect.Float64:
		var f float64
		f, err = strconv.ParseFloat(doc, 64)
		want = reflect.ValueOf(f).Convert(v.Type()).Interface()
	default:
		return fmt.Errorf("a %s default cannot be compared", v.Type())
	}
	if err != nil {
		return err
	}
	if !reflect.DeepEqual(v.Interface(), want) {
		return fmt.Errorf("differs")
	}
	return nil
}

var yamlBlock = regexp.MustCompile("(?s)```yaml\n(.*?)```")

// TestDocsConfigExamplesLoad: every YAML example in README.md and
// docs/configuration.md is a config the loader accepts, so a reader who
// copies one gets a gateway that starts.
func TestDocsConfigExamplesLoad(t *testing.T) {
	t.Parallel()
	// Any ${VAR} an example names is set, to a value long enough for a key.
	anyVar := func(string) (string, bool) { return "example-secret-0123456789", true }
	n := 0
	for _, p := range []string{filepath.Join("..", "..", "README.md"), configurationDoc} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range yamlBlock.FindAllStringSubmatch(string(b), -1) {
			n++
			if _, err := Parse([]byte(m[1]), anyVar); err != nil {
				t.Errorf("%s: a YAML example does not load: %v\n%s", filepath.Base(p), err, m[1])
			}
		}
	}
	if n < 2 {
		t.Errorf("found %d YAML examples in README.md and docs/configuration.md, want the README's and the reference's", n)
	}
}
