package migration

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestParsePrompts(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string // each prompt's ID and last message
		wantErr string
	}{
		{
			name: "messages and shorthand, blank lines skipped",
			in: `{"id": "x", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], "max_tokens": 5}

{"prompt": "short"}
`,
			want: []string{"x: hi", "line-3: short"},
		},
		{name: "empty file", in: "\n\n", wantErr: "no prompts"},
		{name: "not JSON", in: "hello\n", wantErr: "line 1: not a prompt object"},
		{name: "neither prompt nor messages", in: `{"max_tokens": 3}`, wantErr: `line 1: needs "messages"`},
		{name: "both", in: `{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}`, wantErr: "not both"},
		{name: "unknown key", in: `{"prompt": "a", "temprature": 0}`, wantErr: `unknown field "temprature"`},
		{name: "message without role", in: `{"messages": [{"content": "b"}]}`, wantErr: "messages[0]: role is required"},
		{name: "negative limit", in: `{"prompt": "a", "max_tokens": -1}`, wantErr: "must not be negative"},
		{name: "two values on a line", in: `{"prompt": "a"} {"prompt": "b"}`, wantErr: "more than one JSON value"},
		{
			name:    "every bad line is named",
			in:      "{\"prompt\": \"ok\"}\nnope\n{\"prompt\": \"ok\"}\n{}\n",
			wantErr: "line 2: not a prompt object",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePrompts(strings.NewReader(tt.in))
			if wantErr(t, err, tt.wantErr) {
				return
			}
			var summary []string
			for _, p := range got {
				summary = append(summary, p.ID+": "+p.Messages[len(p.Messages)-1].Content)
			}
			if strings.Join(summary, "|") != strings.Join(tt.want, "|") {
				t.Errorf("got %q, want %q", summary, tt.want)
			}
		})
	}
	if _, err := ParsePrompts(strings.NewReader("{\"prompt\": \"ok\"}\nnope\n{}\n")); err == nil ||
		!strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("want both bad lines named, got %v", err)
	}
}

// TestShippedPrompts keeps config/prompts.jsonl loadable and bounded: every
// prompt caps its answer, so a comparison against a paid API costs what its
// size says.
func TestShippedPrompts(t *testing.T) {
	ps, err := LoadPrompts(filepath.Join("..", "..", "..", "config", "prompts.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) < 10 {
		t.Errorf("only %d prompts", len(ps))
	}
	ids := map[string]bool{}
	for _, p := range ps {
		if p.MaxTokens <= 0 && p.MaxCompletionTokens <= 0 {
			t.Errorf("prompt %s has no answer limit", p.ID)
		}
		if ids[p.ID] {
			t.Errorf("prompt id %s twice", p.ID)
		}
		ids[p.ID] = true
	}
}
