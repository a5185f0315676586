package jsondepth

import (
	"strings"
	"testing"
)

// nest wraps inner in depth arrays.
func nest(depth int, inner string) string {
	return strings.Repeat("[", depth) + inner + strings.Repeat("]", depth)
}

func TestExceeds(t *testing.T) {
	const limit = 4
	tests := []struct {
		name string
		body string
		want bool
	}{
		{"flat object", `{"a":1}`, false},
		{"empty", ``, false},
		{"exactly at the limit", `{"a":[{"b":[1]}]}`, false},
		{"one over the limit", `{"a":[{"b":[[1]]}]}`, true},
		{"arrays at the limit", nest(limit, "1"), false},
		{"arrays one over", nest(limit+1, "1"), true},
		{"siblings do not add up", `[[[[1]]],[[[1]]],[[[1]]]]`, false},
		{"brackets in a string are text", `{"a":"[[[[[[{{{{{{"}`, false},
		{"brackets in a key are text", `{"[[[[[[[[":1}`, false},
		{"escaped quote does not end the string", `{"a":"\"[[[[[[[[\""}`, false},
		{"escaped backslash then the closing quote", `{"a":"\\","b":[[[[[1]]]]]}`, true},
		{"escaped backslash and quote", `{"a":"\\\"[[[[[[[["}`, false},
		{"three backslashes then a quote stay in the string", `["\\\"[[[[[[[["]`, false},
		{"deep after a string with brackets", `{"a":"]]]]]]]]","b":[[[[1]]]]}`, true},
		{"closers in a string do not lower the count", `[[["]]]]]]]]",[[[1]]]]]]`, true},
		{"unterminated string", `{"a":"[[[[[[[[`, false},
		{"deep unclosed", strings.Repeat("[", limit+1), true},
		{"unicode escapes", `{"a":"\u005b\u005b\u005b\u005b\u005b"}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Exceeds([]byte(tt.body), limit); got != tt.want {
				t.Errorf("Exceeds(%q, %d) = %v, want %v", tt.body, limit, got, tt.want)
			}
		})
	}
}
