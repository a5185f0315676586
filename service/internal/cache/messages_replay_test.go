package cache

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/packages/ssestream"
)

// TestMessagesStreamReplay: the official Anthropic SDK, reading a cached
// message replayed as a stream, accumulates the same message: every block
// (text, tool_use with its input, thinking with its signature, redacted
// thinking), the stop reason and the usage.
func TestMessagesStreamReplay(t *testing.T) {
	long := strings.Repeat("a longer answer, cut into pieces ", 10)
	tests := []struct{ name, body string }{
		{"text", `{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"cache_creation_input_tokens":3,"cache_read_input_tokens":7,"output_tokens":2}}`},
		{"long text and a tool call", `{"id":"msg_2","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"` + long + `"},{"type":"tool_use","id":"toolu_1","name":"search","input":{"query":"weather in Paris","limit":3,"nested":{"a":[1,2]}}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":50,"output_tokens":40}}`},
		{"thinking", `{"id":"msg_3","type":"message","role":"assistant","model":"claude-x","content":[{"type":"thinking","thinking":"Let me think about é and 日本 carefully, at some length.","signature":"sig-abc"},{"type":"redacted_thinking","data":"opaque"},{"type":"text","text":"done"}],"stop_reason":"stop_sequence","stop_sequence":"END","usage":{"input_tokens":9,"output_tokens":30}}`},
		{"empty tool input", `{"id":"msg_4","type":"message","role":"assistant","model":"claude-x","content":[{"type":"tool_use","id":"toolu_2","name":"now","input":{}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := MessagesStreamReplay([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			res := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}}, Body: io.NopCloser(bytes.NewReader(b))}
			s := ssestream.NewStream[anthropic.MessageStreamEventUnion](ssestream.NewDecoder(res), nil)
			var got anthropic.Message
			for s.Next() {
				if err := got.Accumulate(s.Current()); err != nil {
					t.Fatalf("accumulate: %v\n%s", err, b)
				}
			}
			if err := s.Err(); err != nil {
				t.Fatalf("stream: %v\n%s", err, b)
			}
			var want anthropic.Message
			if err := json.Unmarshal([]byte(tt.body), &want); err != nil {
				t.Fatal(err)
			}
			if g, w := canon(t, got), canon(t, want); g != w {
				t.Errorf("accumulated message differs:\n got %s\nwant %s\nstream:\n%s", g, w, b)
			}
		})
	}
}

// canon is a message's JSON with what the stream carries: the SDK keeps
// the raw JSON of what it read, so the typed fields are compared.
func canon(t *testing.T, m anthropic.Message) string {
	t.Helper()
	type block struct {
		Type, Text, ID, Name, Thinking, Signature, Data string
		Input                                           any
	}
	var blocks []block
	for _, c := range m.Content {
		var in any
		if len(c.Input) > 0 {
			if err := json.Unmarshal(c.Input, &in); err != nil {
				t.Fatalf("tool input %q: %v", c.Input, err)
			}
		}
		blocks = append(blocks, block{c.Type, c.Text, c.ID, c.Name, c.Thinking, c.Signature, c.Data, in})
	}
	b, _ := json.Marshal(struct {
		ID, Model, StopReason, StopSequence string
		Blocks                              []block
		In, Out, CacheWrite, CacheRead      int64
	}{m.ID, string(m.Model), string(m.StopReason), m.StopSequence, blocks,
		m.Usage.InputTokens, m.Usage.OutputTokens, m.Usage.CacheCreationInputTokens, m.Usage.CacheReadInputTokens})
	return string(b)
}

// TestMessagesStreamReplayRefuses: what a replay cannot give exactly is
// refused, so the caller asks the upstream instead of dropping content.
func TestMessagesStreamReplayRefuses(t *testing.T) {
	for name, body := range map[string]string{
		"not JSON":      `{"id":`,
		"not a message": `{"type":"error","error":{"type":"overloaded_error","message":"x"}}`,
		"citations":     `{"type":"message","content":[{"type":"text","text":"x","citations":[{"type":"char_location","cited_text":"x"}]}]}`,
		"server tool":   `{"type":"message","content":[{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}]}`,
		"unknown block": `{"type":"message","content":[{"type":"hologram"}]}`,
	} {
		if _, err := MessagesStreamReplay([]byte(body)); err == nil {
			t.Errorf("%s: replayed", name)
		}
	}
}
