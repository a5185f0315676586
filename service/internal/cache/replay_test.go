package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/relaygate/relaygate/service/internal/testenv"
	openai "github.com/sashabaranov/go-openai"
)

const (
	contentCompletion = `{"id":"chatcmpl-abc","object":"chat.completion","created":1750000000,"model":"gpt-4.1-2025-04-14",
		"system_fingerprint":"fp_123","service_tier":"default",
		"choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog. <b>Bold & bright</b> — naïve café, 日本語のテキスト, and an emoji 🦊 to cross rune boundaries.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],
		"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46,"prompt_tokens_details":{"cached_tokens":0}}}`
	toolCompletion = `{"id":"chatcmpl-tool","object":"chat.completion","created":1750000001,"model":"gpt-4.1",
		"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[
			{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"celsius\",\"days\":[1,2,3]}"}},
			{"id":"call_2","type":"function","function":{"name":"get_time","arguments":"{}"}}]},
		"finish_reason":"tool_calls"}],
		"usage":{"prompt_tokens":50,"completion_tokens":20,"total_tokens":70}}`
	twoChoiceCompletion = `{"id":"chatcmpl-n2","object":"chat.completion","created":1750000002,"model":"gpt-4.1","system_fingerprint":null,
		"choices":[{"index":0,"message":{"role":"assistant","content":"first"},"finish_reason":"stop"},
		           {"index":1,"message":{"role":"assistant","content":"second answer, a little longer than the first one"},"finish_reason":"length"}]}`
	reasoningCompletion = `{"id":"chatcmpl-r","object":"chat.completion","created":1750000003,"model":"deepseek-reasoner",
		"choices":[{"index":0,"message":{"role":"assistant","reasoning_content":"Let me think about this step by step before answering.","content":"42"},"finish_reason":"stop"}],
		"usage":{"prompt_tokens":5,"completion_tokens":15,"total_tokens":20}}`
	refusalCompletion = `{"id":"chatcmpl-ref","object":"chat.completion","created":1750000004,"model":"gpt-4.1",
		"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't help with that request."},"finish_reason":"stop"}]}`
)

// replayedChoice is one choice put back together from its deltas.
type replayedChoice struct {
	role, content, reasoning, refusal, finish string
	tools                                     []openai.ToolCall
}

// parseReplay splits an SSE body into its events, checks the framing, decodes
// every chunk with go-openai's stream type, and reassembles the choices.
func parseReplay(t *testing.T, sse []byte, includeUsage bool) (chunks []openai.ChatCompletionStreamResponse, choices map[int]*replayedChoice, usage *openai.Usage) {
	t.Helper()
	events := strings.Split(string(sse), "\n\n")
	if last := events[len(events)-1]; last != "" {
		t.Fatalf("stream does not end with a blank line; trailing %q", last)
	}
	events = events[:len(events)-1]
	if got := events[len(events)-1]; got != "data: [DONE]" {
		t.Fatalf("last event = %q, want data: [DONE]", got)
	}
	events = events[:len(events)-1]
	choices = map[int]*replayedChoice{}

	for i, ev := range events {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok || strings.Contains(data, "\n") {
			t.Fatalf("event %d is not one data line: %q", i, ev)
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal([]byte(data), &raw); err != nil {
			t.Fatalf("event %d is not JSON: %v: %s", i, err, data)
		}
		u, hasUsage := raw["usage"]
		if hasUsage != includeUsage {
			t.Fatalf("event %d has usage field = %v, want %v: %s", i, hasUsage, includeUsage, data)
		}
		var c openai.ChatCompletionStreamResponse
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatalf("go-openai cannot decode event %d: %v: %s", i, err, data)
		}
		if c.Object != "chat.completion.chunk" {
			t.Fatalf("event %d object = %q", i, c.Object)
		}
		chunks = append(chunks, c)

		if includeUsage && i == len(events)-1 {
			if string(raw["choices"]) != "[]" {
				t.Fatalf("usage chunk has choices %s, want []", raw["choices"])
			}
			usage = c.Usage
			continue
		}
		if includeUsage && string(u) != "null" {
			t.Fatalf("event %d carries usage %s before the last chunk", i, u)
		}
		if len(c.Choices) != 1 {
			t.Fatalf("event %d has %d choices, want 1", i, len(c.Choices))
		}
		ch := c.Choices[0]
		rc := choices[ch.Index]
		if rc == nil {
			rc = &replayedChoice{}
			choices[ch.Index] = rc
		}
		if rc.finish != "" {
			t.Fatalf("event %d continues choice %d after its finish_reason", i, ch.Index)
		}
		rc.role += ch.Delta.Role
		rc.content += ch.Delta.Content
		rc.reasoning += ch.Delta.ReasoningContent
		rc.refusal += ch.Delta.Refusal
		rc.finish = string(ch.FinishReason)
		for _, tc := range ch.Delta.ToolCalls {
			if tc.Index == nil {
				t.Fatalf("event %d: tool call delta without index", i)
			}
			for len(rc.tools) <= *tc.Index {
				rc.tools = append(rc.tools, openai.ToolCall{})
			}
			dst := &rc.tools[*tc.Index]
			dst.ID += tc.ID
			dst.Type += tc.Type
			dst.Function.Name += tc.Function.Name
			dst.Function.Arguments += tc.Function.Arguments
		}
	}
	return chunks, choices, usage
}

func TestStreamReplay(t *testing.T) {
	tests := []struct {
		name       string
		completion string
	}{
		{"content", contentCompletion},
		{"tool calls", toolCompletion},
		{"two choices", twoChoiceCompletion},
		{"reasoning", reasoningCompletion},
		{"refusal", refusalCompletion},
	}
	for _, tt := range tests {
		for _, includeUsage := range []bool{false, true} {
			name := tt.name
			if includeUsage {
				name += " with usage"
			}
			t.Run(name, func(t *testing.T) {
				var want openai.ChatCompletionResponse
				if err := json.Unmarshal([]byte(tt.completion), &want); err != nil {
					t.Fatalf("fixture: %v", err)
				}
				var wantReasoning = map[int]string{}
				var rawWant struct {
					Choices []struct {
						Index   int `json:"index"`
						Message struct {
							ReasoningContent string `json:"reasoning_content"`
						} `json:"message"`
					} `json:"choices"`
				}
				_ = json.Unmarshal([]byte(tt.completion), &rawWant)
				for _, c := range rawWant.Choices {
					wantReasoning[c.Index] = c.Message.ReasoningContent
				}

				sse, err := StreamReplay([]byte(tt.completion), includeUsage)
				if err != nil {
					t.Fatalf("StreamReplay: %v", err)
				}
				chunks, got, usage := parseReplay(t, sse, includeUsage)

				for i, c := range chunks {
					if c.ID != want.ID || c.Model != want.Model || c.Created != want.Created ||
						c.SystemFingerprint != want.SystemFingerprint {
						t.Fatalf("chunk %d header %q %q %d %q, want %q %q %d %q", i,
							c.ID, c.Model, c.Created, c.SystemFingerprint,
							want.ID, want.Model, want.Created, want.SystemFingerprint)
					}
				}
				if len(got) != len(want.Choices) {
					t.Fatalf("replayed %d choices, want %d", len(got), len(want.Choices))
				}
				for _, wc := range want.Choices {
					gc := got[wc.Index]
					if gc == nil {
						t.Fatalf("choice %d missing", wc.Index)
					}
					if gc.role != wc.Message.Role || gc.content != wc.Message.Content ||
						gc.refusal != wc.Message.Refusal || gc.reasoning != wantReasoning[wc.Index] ||
						gc.finish != string(wc.FinishReason) {
						t.Errorf("choice %d replayed as %+v, want %+v (reasoning %q)", wc.Index, *gc, wc.Message, wantReasoning[wc.Index])
					}
					if len(gc.tools) != len(wc.Message.ToolCalls) {
						t.Fatalf("choice %d: %d tool calls, want %d", wc.Index, len(gc.tools), len(wc.Message.ToolCalls))
					}
					for k, tc := range wc.Message.ToolCalls {
						g := gc.tools[k]
						if g.ID != tc.ID || g.Type != tc.Type || g.Function != tc.Function {
							t.Errorf("tool call %d = %+v, want %+v", k, g, tc)
						}
					}
				}
				if includeUsage {
					if (usage == nil) != (want.Usage.TotalTokens == 0) {
						t.Fatalf("usage chunk carries %+v, want %+v", usage, want.Usage)
					}
					if usage != nil && !reflect.DeepEqual(*usage, want.Usage) {
						t.Fatalf("usage = %+v, want %+v", *usage, want.Usage)
					}
				}
			})
		}
	}
}

func TestStreamReplaySplitsLongContent(t *testing.T) {
	sse, err := StreamReplay([]byte(contentCompletion), false)
	if err != nil {
		t.Fatal(err)
	}
	chunks, _, _ := parseReplay(t, sse, false)
	pieces := 0
	for _, c := range chunks {
		if d := c.Choices[0].Delta.Content; d != "" {
			pieces++
			if !utf8.ValidString(d) {
				t.Errorf("piece %q splits a character", d)
			}
		}
	}
	if pieces < 2 || pieces > maxPieces {
		t.Fatalf("content came in %d pieces, want a few (2..%d)", pieces, maxPieces)
	}
	if bytes.Contains(sse, []byte(`\u003c`)) || bytes.Contains(sse, []byte(`\u0026`)) {
		t.Error("replay HTML-escaped the content; OpenAI sends it as is")
	}
}

func TestStreamReplayRejectsNonCompletions(t *testing.T) {
	tests := []struct{ name, body string }{
		{"not JSON", `{"id":`},
		{"embeddings list", `{"object":"list","data":[{"object":"embedding","embedding":[0.1]}]}`},
		{"error body", `{"error":{"message":"nope","type":"invalid_request_error"}}`},
		{"no choices", `{"id":"x","object":"chat.completion","choices":[]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if out, err := StreamReplay([]byte(tt.body), true); err == nil {
				t.Fatalf("StreamReplay accepted it and produced %q", out)
			}
		})
	}
}

// TestStreamReplayThroughOpenAIClient serves a replay over loopback HTTP to
// the go-openai client, the way a gateway client would receive it.
func TestStreamReplayThroughOpenAIClient(t *testing.T) {
	sse, err := StreamReplay([]byte(contentCompletion), true)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write(sse)
	}))
	t.Cleanup(srv.Close)

	cfg := openai.DefaultConfig("test-key")
	cfg.BaseURL = srv.URL + "/v1"
	client := openai.NewClientWithConfig(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := client.CreateChatCompletionStream(ctx, openai.ChatCompletionRequest{
		Model:         "gpt-4.1",
		Messages:      []openai.ChatCompletionMessage{{Role: "user", Content: "hi"}},
		StreamOptions: &openai.StreamOptions{IncludeUsage: true},
	})
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}

	var content strings.Builder
	var usage *openai.Usage
	for _, resp := range testenv.ReadChatStream(t, stream) {
		for _, c := range resp.Choices {
			content.WriteString(c.Delta.Content)
		}
		if resp.Usage != nil {
			usage = resp.Usage
		}
	}
	var want openai.ChatCompletionResponse
	if err := json.Unmarshal([]byte(contentCompletion), &want); err != nil {
		t.Fatal(err)
	}
	if content.String() != want.Choices[0].Message.Content {
		t.Fatalf("streamed content %q, want %q", content.String(), want.Choices[0].Message.Content)
	}
	if usage == nil || usage.TotalTokens != want.Usage.TotalTokens {
		t.Fatalf("usage = %+v, want %+v", usage, want.Usage)
	}
}

// TestStreamReplayKeepsLogprobs: a cached answer's log probabilities reach
// a streaming client, per token when the tokens spell the text, else whole
// in the first chunk after the role. The old replay wrote null in every
// chunk.
func TestStreamReplayKeepsLogprobs(t *testing.T) {
	const tokA = `{"token":"Hel","logprob":-0.1,"bytes":[72,101,108],"top_logprobs":[]}`
	const tokB = `{"token":"lo","logprob":-0.2,"bytes":[108,111],"top_logprobs":[]}`
	tests := []struct {
		name, completion string
		// want is each chunk's logprobs after the role chunk, and the
		// content deltas, in order.
		wantLogprobs []string
		wantContent  []string
	}{
		{
			name:         "per token",
			completion:   `{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"logprobs":{"content":[` + tokA + `,` + tokB + `],"refusal":null},"finish_reason":"stop"}]}`,
			wantLogprobs: []string{`{"content":[` + tokA + `],"refusal":null}`, `{"content":[` + tokB + `],"refusal":null}`, `null`},
			wantContent:  []string{"Hel", "lo", ""},
		},
		{
			name:         "tokens not spelling the text are carried whole",
			completion:   `{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"logprobs":{"content":[` + tokA + `],"refusal":null},"finish_reason":"stop"}]}`,
			wantLogprobs: []string{`{"content":[` + tokA + `],"refusal":null}`, `null`},
			wantContent:  []string{"Hi", ""},
		},
		{
			name:         "refusal tokens",
			completion:   `{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"Hello"},"logprobs":{"content":null,"refusal":[` + tokA + `,` + tokB + `]},"finish_reason":"stop"}]}`,
			wantLogprobs: []string{`{"refusal":[` + tokA + `],"content":null}`, `{"refusal":[` + tokB + `],"content":null}`, `null`},
			wantContent:  []string{"", "", ""},
		},
		{
			name:         "none",
			completion:   `{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"logprobs":null,"finish_reason":"stop"}]}`,
			wantLogprobs: []string{`null`, `null`},
			wantContent:  []string{"Hello", ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sse, err := StreamReplay([]byte(tt.completion), false)
			if err != nil {
				t.Fatal(err)
			}
			parseReplay(t, sse, false) // framing and go-openai decoding
			var gotLP, gotContent []string
			for i, ev := range strings.Split(strings.TrimSuffix(string(sse), "data: [DONE]\n\n"), "\n\n") {
				if ev == "" || i == 0 {
					continue // the role chunk
				}
				var c struct {
					Choices []struct {
						Delta    struct{ Content string } `json:"delta"`
						Logprobs json.RawMessage          `json:"logprobs"`
					} `json:"choices"`
				}
				if err := json.Unmarshal([]byte(strings.TrimPrefix(ev, "data: ")), &c); err != nil {
					t.Fatal(err)
				}
				gotLP = append(gotLP, string(c.Choices[0].Logprobs))
				gotContent = append(gotContent, c.Choices[0].Delta.Content)
			}
			if !reflect.DeepEqual(gotLP, tt.wantLogprobs) {
				t.Errorf("logprobs per chunk:\n got %q\nwant %q", gotLP, tt.wantLogprobs)
			}
			if !reflect.DeepEqual(gotContent, tt.wantContent) {
				t.Errorf("content per chunk: got %q, want %q", gotContent, tt.wantContent)
			}
		})
	}
}
