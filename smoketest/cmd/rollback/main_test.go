package main

import (
	"bytes"
	"testing"
)

// Only usage is tested here: any other run would select a real stack. The
// rollback itself is tested in internal/rollback on recorded history.
func TestUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"-stack"}, {"-stack", "dev", "extra"}, {"-no-such-flag"}} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 2 {
			t.Errorf("run(%q) = %d, want 2 (usage)", args, code)
		}
	}
}
