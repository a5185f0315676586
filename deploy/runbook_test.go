package deploy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/relaygate/relaygate/internal/doccheck"
	"gopkg.in/yaml.v3"
)

// runbookBase is where every alert's runbook_url points: the section of
// docs/operations.md named after the alert, lowercased, as GitHub anchors
// the heading `### <AlertName>`. Absolute, since whoever clicks it reads
// the alert in a chat tool or a pager, far from a checkout.
const runbookBase = "https://github.com/relaygate/relaygate/blob/main/docs/operations.md#"

type alertRule struct {
	Alert       string            `yaml:"alert"`
	Annotations map[string]string `yaml:"annotations"`
}

// alertRules reads every alert rule of the embedded rule files.
func alertRules(t *testing.T) map[string]alertRule {
	t.Helper()
	files, err := PrometheusFiles()
	if err != nil {
		t.Fatal(err)
	}
	rules := map[string]alertRule{}
	for name, text := range files {
		if !strings.HasPrefix(name, "rules/") {
			continue
		}
		var doc struct {
			Groups []struct {
				Rules []alertRule `yaml:"rules"`
			} `yaml:"groups"`
		}
		if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, g := range doc.Groups {
			for _, r := range g.Rules {
				if r.Alert != "" {
					rules[r.Alert] = r
				}
			}
		}
	}
	if len(rules) == 0 {
		t.Fatal("no alert rules found in the embedded rule files")
	}
	return rules
}

// TestAlertRunbooks: every alert's runbook_url leads to a section of
// docs/operations.md that exists, so the link an on-call engineer clicks
// at 3 a.m. is never a dead end; and every alert-named section there is
// an alert that exists, so a renamed alert leaves no stale runbook.
func TestAlertRunbooks(t *testing.T) {
	t.Parallel()
	ops, err := os.ReadFile(filepath.Join("..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := doccheck.Anchors(string(ops))
	rules := alertRules(t)
	for name, r := range rules {
		want := runbookBase + strings.ToLower(name)
		switch got, ok := r.Annotations["runbook_url"]; {
		case !ok:
			t.Errorf("alert %s has no runbook_url annotation; add runbook_url: %q", name, want)
		case got != want:
			t.Errorf("alert %s: runbook_url %q, want %q", name, got, want)
		}
		if !anchors[strings.ToLower(name)] {
			t.Errorf("alert %s: docs/operations.md has no section `### %s` (its runbook_url's anchor)", name, name)
		}
	}
	for _, h := range doccheck.Headings(string(ops)) {
		if strings.HasPrefix(h, "Relaygate") && !strings.Contains(h, " ") {
			if _, ok := rules[h]; !ok {
				names := make([]string, 0, len(rules))
				for n := range rules {
					names = append(names, n)
				}
				slices.Sort(names)
				t.Errorf("docs/operations.md has a runbook section %q for an alert the rules do not have (alerts: %s)", h, strings.Join(names, ", "))
			}
		}
	}
}
