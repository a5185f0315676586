package upstreamsim

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

func TestEstimateTokens(t *testing.T) {
	tests := []struct{ bytes, want int }{
		{0, 0}, {1, 1}, {3, 1}, {4, 1}, {5, 2}, {8, 2}, {9, 3}, {400, 100},
	}
	for _, tc := range tests {
		if got := estimateTokens(tc.bytes); got != tc.want {
			t.Errorf("estimateTokens(%d) = %d, want %d", tc.bytes, got, tc.want)
		}
	}
}

func TestDigestMessages(t *testing.T) {
	base := `[{"role":"user","content":"abc"}]`
	tests := []struct {
		name      string
		model     string
		messages  string
		same      bool
		textBytes int
	}{
		{name: "identical", model: "m", messages: base, same: true, textBytes: 3},
		{name: "whitespace and extra fields", model: "m", messages: `[ {"content" : "abc", "role":"user", "name":"x"} ]`, same: true, textBytes: 3},
		{name: "text parts", model: "m", messages: `[{"role":"user","content":[{"type":"text","text":"abc"}]}]`, same: true, textBytes: 3},
		{name: "other model", model: "n", messages: base, textBytes: 3},
		{name: "other role", model: "m", messages: `[{"role":"system","content":"abc"}]`, textBytes: 3},
		{name: "split differently", model: "m", messages: `[{"role":"user","content":"ab"},{"role":"user","content":"c"}]`, textBytes: 3},
		{name: "null content", model: "m", messages: `[{"role":"assistant","content":null}]`, textBytes: 0},
	}
	want := digestMessages("m", gjson.Parse(base))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := digestMessages(tc.model, gjson.Parse(tc.messages))
			if (got.seed == want.seed) != tc.same {
				t.Errorf("seed equal = %v, want %v", got.seed == want.seed, tc.same)
			}
			if got.textBytes != tc.textBytes {
				t.Errorf("textBytes = %d, want %d", got.textBytes, tc.textBytes)
			}
		})
	}
}

func TestWordStream(t *testing.T) {
	var a, b []byte
	wa, wb := newWordStream(7), newWordStream(7)
	for range 50 {
		a = wa.appendNext(a)
	}
	for range 10 {
		b = wb.appendNext(b)
	}
	if !strings.HasPrefix(string(a), string(b)) {
		t.Errorf("a shorter answer is not a prefix of a longer one: %q vs %q", b, a)
	}
	if words := strings.Fields(string(a)); len(words) != 50 || strings.Join(words, " ") != string(a) {
		t.Errorf("want 50 single-space-separated words, got %q", a)
	}
	distinct := map[string]bool{}
	for _, w := range strings.Fields(string(a)) {
		distinct[w] = true
	}
	if len(distinct) < 10 {
		t.Errorf("only %d distinct words in 50: the generator is degenerate", len(distinct))
	}
}

func TestSplitMixRanges(t *testing.T) {
	rng := newSplitMix(1, 1)
	for range 10000 {
		if f := rng.float(); f < 0 || f >= 1 {
			t.Fatalf("float() = %v, outside [0,1)", f)
		}
		if n := rng.intn(3); n < 0 || n >= 3 {
			t.Fatalf("intn(3) = %d", n)
		}
		if d := rng.duration(time.Millisecond); d < 0 || d > time.Millisecond {
			t.Fatalf("duration(1ms) = %v", d)
		}
	}
	if d := rng.duration(0); d != 0 {
		t.Errorf("duration(0) = %v", d)
	}
}

// TestSplitMixStreamsDoNotOverlap guards against neighbouring requests (and
// seeds) getting the same draws shifted by one, which would make, for
// example, consecutive ids share most of their characters.
func TestSplitMixStreamsDoNotOverlap(t *testing.T) {
	seen := map[uint64]string{}
	for seed := range uint64(3) {
		for n := range uint64(1000) {
			rng := newSplitMix(seed, n)
			for k := range 8 {
				v := rng.next()
				where := fmt.Sprintf("seed %d stream %d draw %d", seed, n, k)
				if prev, dup := seen[v]; dup {
					t.Fatalf("%s repeats %s", where, prev)
				}
				seen[v] = where
			}
		}
	}
}

func TestNewSettings(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want func(s *settings) bool
	}{
		{"defaults", Config{}, func(s *settings) bool {
			return s.CompletionTokens == DefaultCompletionTokens && s.TokensPerChunk == DefaultTokensPerChunk &&
				s.EmbeddingDims == DefaultEmbeddingDims && len(s.FailureStatuses) == 1 &&
				s.FailureStatuses[0] == DefaultFailureStatus && s.models == nil && s.key == nil && s.retryAfter == nil
		}},
		{"rates clamped", Config{FailureRate: 2, HangRate: -1, ResetRate: math.NaN(), CutRate: 0.25}, func(s *settings) bool {
			return s.FailureRate == 1 && s.HangRate == 0 && s.ResetRate == 0 && s.CutRate == 0.25
		}},
		{"bad statuses dropped", Config{FailureStatuses: []int{0, 42, 429, 1000}}, func(s *settings) bool {
			return len(s.FailureStatuses) == 1 && s.FailureStatuses[0] == 429
		}},
		{"negative durations zeroed", Config{Latency: -1, Jitter: -1, ChunkDelay: -1, RetryAfter: -1, CutAfterChunks: -3}, func(s *settings) bool {
			return s.Latency == 0 && s.Jitter == 0 && s.ChunkDelay == 0 && s.RetryAfter == 0 && s.CutAfterChunks == 0
		}},
		{"retry-after rounded up", Config{RetryAfter: 100 * time.Millisecond}, func(s *settings) bool {
			return s.retryAfter[0] == "1" && s.retryAfterM[0] == "100"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if s := newSettings(tc.cfg, 1); !tc.want(s) {
				t.Errorf("settings = %+v", s.Config)
			}
		})
	}

	t.Run("caller's slices are copied", func(t *testing.T) {
		models := []string{"a"}
		s := newSettings(Config{Models: models}, 1)
		models[0] = "b"
		if !s.knownModel("a") || s.knownModel("b") || s.Models[0] != "a" {
			t.Error("settings share the caller's Models slice")
		}
	})
}
