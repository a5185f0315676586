package doccheck

import (
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The packages that define the gateway's metrics.
var metricPackages = []string{"service/internal/metrics", "service/internal/gpu"}

var metricName = regexp.MustCompile(`^relaygate_[a-z0-9_]+$`)

// definedMetrics returns every metric name the packages' code spells out:
// the string literals that are a whole relaygate_ name (CounterOpts.Name,
// prometheus.NewDesc's first argument …), read from their non-test files.
func definedMetrics(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	fset := token.NewFileSet()
	for _, pkg := range metricPackages {
		files, err := filepath.Glob(filepath.Join(root, pkg, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(file, func(n ast.Node) bool {
				if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					if s, err := strconv.Unquote(lit.Value); err == nil && metricName.MatchString(s) {
						out[s] = pkg
					}
				}
				return true
			})
		}
	}
	if len(out) < 20 {
		t.Fatalf("found only %d metric names in %v; the scan is broken: %v", len(out), metricPackages, out)
	}
	return out
}

// metricsTable returns the metric names in the first column of the table
// under docs/operations.md's "## Metrics" heading, with their lines.
func metricsTable(t *testing.T, doc string) map[string]int {
	t.Helper()
	out := map[string]int{}
	in := false
	names := regexp.MustCompile("`(relaygate_[a-z0-9_]+)")
	for i, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, "#") {
			in = strings.TrimSpace(strings.TrimLeft(line, "#")) == "Metrics"
			continue
		}
		if !in || !strings.HasPrefix(line, "|") {
			continue
		}
		first, _, _ := strings.Cut(strings.TrimPrefix(line, "|"), " | ")
		for _, m := range names.FindAllStringSubmatch(first, -1) {
			out[m[1]] = i + 1
		}
	}
	if len(out) == 0 {
		t.Fatal(`docs/operations.md has no metrics table under "## Metrics"`)
	}
	return out
}

// TestMetricsDocumented: the metrics table in docs/operations.md names
// every metric the code defines, and no metric it does not, so the names a
// dashboard or an alert is written against are the names that exist.
func TestMetricsDocumented(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	doc, err := os.ReadFile(filepath.Join(root, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	defined := definedMetrics(t, root)
	table := metricsTable(t, string(doc))
	for _, name := range slices.Sorted(maps.Keys(defined)) {
		if _, ok := table[name]; ok {
			continue
		}
		t.Errorf("metric %s (defined in %s) is not in the metrics table of docs/operations.md", name, defined[name])
	}
	for name, line := range table {
		if _, ok := defined[name]; !ok {
			t.Errorf("docs/operations.md:%d: metric %s is documented but no code in %v defines it", line, name, metricPackages)
		}
	}
}
