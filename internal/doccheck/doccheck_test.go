package doccheck

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSlug(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ heading, want string }{
		{"Operations", "operations"},
		{"RelaygateGPUMissing", "relaygategpumissing"},
		{"Exposure of /metrics and /health", "exposure-of-metrics-and-health"},
		{"Before you migrate: compare", "before-you-migrate-compare"},
		{"Routing, retries and fallback", "routing-retries-and-fallback"},
		{"`cache.scope` and keys", "cachescope-and-keys"},
		{"Verify: the smoke test", "verify-the-smoke-test"},
		{"A [linked](x.md) heading", "a-linked-heading"},
		{"snake_case and kebab-case", "snake_case-and-kebab-case"},
		{"Größe 2", "größe-2"},
		{"  Trailing  ", "trailing"},
	} {
		if got := Slug(tc.heading); got != tc.want {
			t.Errorf("Slug(%q) = %q, want %q", tc.heading, got, tc.want)
		}
	}
}

func TestAnchors(t *testing.T) {
	t.Parallel()
	md := "# Title\n\n## Setup\ntext\n## Setup ##\n```sh\n# not a heading\n```\n### Setup\n####NoSpace\n"
	got := Anchors(md)
	want := []string{"title", "setup", "setup-1", "setup-2"}
	for _, w := range want {
		if !got[w] {
			t.Errorf("anchor %q missing from %v", w, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("anchors %v, want exactly %v", got, want)
	}
}

func TestLinks(t *testing.T) {
	t.Parallel()
	md := strings.Join([]string{
		"See [api](docs/api.md#errors) and ![chart](img/c.png \"Chart\").",
		"`[not](a-link.md)` in a code span",
		"```",
		"[not](in-a-fence.md)",
		"```",
		"| [`cmd`](docs/testing.md) | [web](https://example.com) |",
	}, "\n")
	var got []string
	for _, l := range Links(md) {
		got = append(got, l.Target)
	}
	want := []string{"docs/api.md#errors", "img/c.png", "docs/testing.md", "https://example.com"}
	if !slices.Equal(got, want) {
		t.Errorf("Links = %q, want %q", got, want)
	}
}

// TestCheckFile: the checker itself finds each kind of dead link, so a
// clean run over the real docs means something.
func TestCheckFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("docs/b.md", "# B\n## Good section\n")
	write("a.md", strings.Join([]string{
		"# A",
		"[ok](docs/b.md#good-section) [ok](#a) [ok](docs/) [ok](https://x.invalid/nope)",
		"[missing file](docs/c.md)",
		"[missing anchor](docs/b.md#bad-section)",
		"[missing local anchor](#nowhere)",
	}, "\n"))
	problems, err := CheckFile(filepath.Join(dir, "a.md"))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{`"docs/c.md": no such file`, `"docs/b.md#bad-section"`, `"#nowhere"`} {
		if i >= len(problems) || !strings.Contains(problems[i], want) {
			t.Errorf("problem %d: want one containing %s, got %q", i, want, problems)
		}
	}
	if len(problems) != 3 {
		t.Errorf("got %d problems, want 3: %q", len(problems), problems)
	}
}

// repoRoot is the module's root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("no go.mod at %s: %v", root, err)
	}
	return root
}

// TestDocsLinksResolve: every relative link in README.md and docs/*.md
// reaches a file, and every #anchor a heading.
func TestDocsLinksResolve(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) == 0 {
		t.Fatal("no docs/*.md")
	}
	for _, p := range append([]string{filepath.Join(root, "README.md")}, pages...) {
		problems, err := CheckFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, pr := range problems {
			t.Error(strings.TrimPrefix(pr, root+string(filepath.Separator)))
		}
	}
}

// TestReadmeLinksEveryDocsPage: the README is the map; a page it does not
// link is a page no newcomer finds.
func TestReadmeLinksEveryDocsPage(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	linked := map[string]bool{}
	for _, l := range Links(string(readme)) {
		file, _, _ := strings.Cut(l.Target, "#")
		linked[filepath.Clean(file)] = true
	}
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pages {
		rel, _ := filepath.Rel(root, p)
		if !linked[filepath.ToSlash(rel)] {
			t.Errorf("README.md does not link %s", filepath.ToSlash(rel))
		}
	}
}
