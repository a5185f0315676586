package pulumistack

import (
	"os"
	"path/filepath"
	"testing"
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
