package config

import (
	"testing"
)

// TestBufferBudgetBytes: the budget of whole answers in memory defaults to
// one that fits the largest embeddings answer, and cannot be set so low
// that ordinary answers queue.
func TestBufferBudgetBytes(t *testing.T) {
	cases := []struct {
		name, line string
		want       int64
		err        string
	}{
		{"default", "", DefaultBufferBudgetBytes, ""},
		{"set", "buffer_budget_bytes: 1073741824\n", 1 << 30, ""},
		{"too small", "buffer_budget_bytes: 65536\n", 0, "buffer_budget_bytes: must be at least 1048576"},
		{"negative", "buffer_budget_bytes: -1\n", 0, "buffer_budget_bytes: must be at least"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(minimal+tc.line), env(map[string]string{"RELAY_KEY": "k"}))
			if tc.err != "" {
				errorSays(t, err, tc.err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.BufferBudgetBytes != tc.want {
				t.Errorf("buffer_budget_bytes = %d, want %d", cfg.BufferBudgetBytes, tc.want)
			}
		})
	}
	if DefaultBufferBudgetBytes < 192<<20 {
		t.Errorf("the default budget (%d) does not fit the largest embeddings answer", DefaultBufferBudgetBytes)
	}
}
