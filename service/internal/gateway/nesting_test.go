package gateway

import (
	"strings"
	"testing"
)

// nest wraps inner in depth arrays.
func nest(depth int, inner string) string {
	return strings.Repeat("[", depth) + inner + strings.Repeat("]", depth)
}

// TestParseRequestNesting: the real limit, counted with the body's own
// object as the first level.
func TestParseRequestNesting(t *testing.T) {
	const head = `{"model":"m","messages":[{"role":"user","content":"hi"}],"x":`
	tests := []struct {
		name string
		body string
		code string // "" accepted
	}{
		{"at the limit", head + nest(maxNesting-1, "1") + `}`, ""},
		{"one over the limit", head + nest(maxNesting, "1") + `}`, "nesting_too_deep"},
		{"2 MB of brackets, never closed", head + strings.Repeat("[", 2<<20), "nesting_too_deep"},
		{"deep and invalid", strings.Repeat("{", maxNesting+1), "nesting_too_deep"},
		{"deep inside a string is fine", head + `"` + strings.Repeat("[", 2<<20) + `"}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, e := parseRequest([]byte(tt.body), epChat)
			switch {
			case tt.code == "" && e != nil:
				t.Fatalf("refused: %+v", e)
			case tt.code != "" && e == nil:
				t.Fatalf("accepted, want %s", tt.code)
			case tt.code != "" && (e.Code != tt.code || e.Status != 400 || e.Type != typeInvalidRequest ||
				!strings.Contains(e.Message, "512")):
				t.Fatalf("got %+v, want a 400 %s naming the limit", e, tt.code)
			}
		})
	}
}

// TestDeeplyNestedBodyRefused: a body gjson would recurse into a million
// frames deep (a fatal, unrecoverable stack overflow before the limit) gets
// a 400 and the gateway keeps serving.
func TestDeeplyNestedBodyRefused(t *testing.T) {
	up := newFakeUpstream(t, okCompletion)
	gw, _, _ := newGateway(t, gwOpts{}, up)
	body := `{"model":"m","messages":` + strings.Repeat("[", 2<<20)
	res := post(t, gw.URL, "/v1/chat/completions", body)
	if res.status != 400 {
		t.Fatalf("status %d, want 400: %.200s", res.status, res.body)
	}
	msg, typ, code := openAIError(t, res.body)
	if typ != typeInvalidRequest || code != "nesting_too_deep" || !strings.Contains(msg, "512") {
		t.Errorf("type %q code %q message %q: want invalid_request_error nesting_too_deep naming the limit", typ, code, msg)
	}
	if up.calls.Load() != 0 {
		t.Errorf("the refused body reached the upstream")
	}
	if res := post(t, gw.URL, "/v1/chat/completions", chatBody); res.status != 200 {
		t.Errorf("after the deep body: status %d %s", res.status, res.body)
	}
}
