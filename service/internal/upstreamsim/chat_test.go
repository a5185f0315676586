package upstreamsim

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"

	openai "github.com/sashabaranov/go-openai"
)

func TestChatCompletion(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		maxTokens  int
		maxCompl   int
		wantTokens int
		wantFinish openai.FinishReason
	}{
		{name: "defaults", wantTokens: DefaultCompletionTokens, wantFinish: openai.FinishReasonStop},
		{name: "configured length", cfg: Config{CompletionTokens: 40}, wantTokens: 40, wantFinish: openai.FinishReasonStop},
		{name: "max_tokens smaller", cfg: Config{CompletionTokens: 40}, maxTokens: 3, wantTokens: 3, wantFinish: openai.FinishReasonLength},
		{name: "max_completion_tokens smaller", maxCompl: 5, wantTokens: 5, wantFinish: openai.FinishReasonLength},
		{name: "max_tokens larger", cfg: Config{CompletionTokens: 4}, maxTokens: 100, wantTokens: 4, wantFinish: openai.FinishReasonStop},
		{name: "model allowed", cfg: Config{Models: []string{"gpt-4.1", "sim-small"}}, wantTokens: DefaultCompletionTokens, wantFinish: openai.FinishReasonStop},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim, ts := startSim(t, tc.cfg)
			client := newClient(ts, "any-key")
			req := withMaxTokens(chatRequestFor("gpt-4.1", "Say something about gateways, please."), tc.maxTokens)
			req.MaxCompletionTokens = tc.maxCompl

			resp, err := client.CreateChatCompletion(testContext(t), req)
			if err != nil {
				t.Fatalf("CreateChatCompletion: %v", err)
			}
			if !strings.HasPrefix(resp.ID, "chatcmpl-") || len(resp.ID) != len("chatcmpl-")+29 {
				t.Errorf("id = %q, want chatcmpl- and 29 characters", resp.ID)
			}
			if resp.Object != "chat.completion" || resp.Model != "gpt-4.1" || resp.Created == 0 {
				t.Errorf("object/model/created = %q/%q/%d", resp.Object, resp.Model, resp.Created)
			}
			if resp.SystemFingerprint == "" {
				t.Error("system_fingerprint is empty")
			}
			if len(resp.Choices) != 1 {
				t.Fatalf("choices = %d, want 1", len(resp.Choices))
			}
			ch := resp.Choices[0]
			if ch.Message.Role != openai.ChatMessageRoleAssistant {
				t.Errorf("role = %q", ch.Message.Role)
			}
			if got := len(strings.Fields(ch.Message.Content)); got != tc.wantTokens {
				t.Errorf("content has %d words, want %d: %q", got, tc.wantTokens, ch.Message.Content)
			}
			if ch.FinishReason != tc.wantFinish {
				t.Errorf("finish_reason = %q, want %q", ch.FinishReason, tc.wantFinish)
			}
			wantUsage := openai.Usage{PromptTokens: promptTokensOf(req), CompletionTokens: tc.wantTokens}
			wantUsage.TotalTokens = wantUsage.PromptTokens + wantUsage.CompletionTokens
			if u := resp.Usage; u.PromptTokens != wantUsage.PromptTokens ||
				u.CompletionTokens != wantUsage.CompletionTokens || u.TotalTokens != wantUsage.TotalTokens {
				t.Errorf("usage = %+v, want %+v", u, wantUsage)
			}
			if got := sim.Stats().Requests[EndpointChatCompletions]; got != 1 {
				t.Errorf("chat requests counted = %d, want 1", got)
			}
		})
	}
}

// TestChatCompletionRawShape checks the fields the Go client would not
// notice missing, on the exact bytes, for both paths.
func TestChatCompletionRawShape(t *testing.T) {
	_, ts := startSim(t, Config{})
	for _, path := range []string{"/v1/chat/completions", "/chat/completions"} {
		t.Run(path, func(t *testing.T) {
			resp, body := requestOK(t, ts, http.MethodPost, path,
				`{"model":"m<&>\"x","messages":[{"role":"user","content":"hi"}]}`)
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			var got struct {
				Model   string `json:"model"`
				Choices []struct {
					Index        *int            `json:"index"`
					Message      json.RawMessage `json:"message"`
					FinishReason string          `json:"finish_reason"`
				} `json:"choices"`
				Usage             map[string]json.RawMessage `json:"usage"`
				SystemFingerprint string                     `json:"system_fingerprint"`
			}
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("body is not JSON: %v: %s", err, body)
			}
			if got.Model != `m<&>"x` {
				t.Errorf("model not echoed exactly: %q", got.Model)
			}
			if len(got.Choices) != 1 || got.Choices[0].Index == nil || *got.Choices[0].Index != 0 {
				t.Fatalf("choices = %s", body)
			}
			for _, k := range []string{"prompt_tokens", "completion_tokens", "total_tokens"} {
				if _, ok := got.Usage[k]; !ok {
					t.Errorf("usage lacks %s: %s", k, body)
				}
			}
			if got.SystemFingerprint != systemFingerprint {
				t.Errorf("system_fingerprint = %q", got.SystemFingerprint)
			}
		})
	}
}

func TestChatStream(t *testing.T) {
	tests := []struct {
		name         string
		cfg          Config
		includeUsage bool
		maxTokens    int
		wantTokens   int
		wantChunks   int // content chunks
		wantFinish   openai.FinishReason
	}{
		{name: "defaults", wantTokens: 16, wantChunks: 16, wantFinish: openai.FinishReasonStop},
		{name: "with usage", includeUsage: true, wantTokens: 16, wantChunks: 16, wantFinish: openai.FinishReasonStop},
		{name: "three tokens per chunk", cfg: Config{CompletionTokens: 10, TokensPerChunk: 3}, includeUsage: true,
			wantTokens: 10, wantChunks: 4, wantFinish: openai.FinishReasonStop},
		{name: "max_tokens cut short", cfg: Config{CompletionTokens: 10}, maxTokens: 2,
			wantTokens: 2, wantChunks: 2, wantFinish: openai.FinishReasonLength},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim, ts := startSim(t, tc.cfg)
			client := newClient(ts, "k")
			req := withMaxTokens(chatRequestFor("gpt-4.1", "Stream me a few words."), tc.maxTokens)
			ctx := testContext(t)

			plain, err := client.CreateChatCompletion(ctx, req)
			if err != nil {
				t.Fatalf("CreateChatCompletion: %v", err)
			}

			req.Stream = true
			if tc.includeUsage {
				req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
			}
			stream, err := client.CreateChatCompletionStream(ctx, req)
			if err != nil {
				t.Fatalf("CreateChatCompletionStream: %v", err)
			}
			defer stream.Close()

			var (
				content      strings.Builder
				chunks       int
				sawRole      bool
				finish       openai.FinishReason
				usage        *openai.Usage
				usageChunks  int
				contentAfter bool
			)
			for {
				chunk, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("Recv: %v", err)
				}
				if chunk.Object != "chat.completion.chunk" || chunk.Model != "gpt-4.1" || !strings.HasPrefix(chunk.ID, "chatcmpl-") {
					t.Errorf("chunk header = %q/%q/%q", chunk.Object, chunk.Model, chunk.ID)
				}
				if chunk.Usage != nil {
					usageChunks++
					usage = chunk.Usage
					if len(chunk.Choices) != 0 {
						t.Errorf("usage chunk has %d choices, want 0", len(chunk.Choices))
					}
					continue
				}
				if len(chunk.Choices) != 1 {
					t.Fatalf("chunk has %d choices", len(chunk.Choices))
				}
				d := chunk.Choices[0]
				if d.Delta.Role == openai.ChatMessageRoleAssistant {
					if chunks > 0 || sawRole {
						t.Error("role chunk is not first")
					}
					sawRole = true
				}
				if d.Delta.Content != "" {
					if finish != "" {
						contentAfter = true
					}
					chunks++
					content.WriteString(d.Delta.Content)
				}
				if d.FinishReason != "" {
					finish = d.FinishReason
				}
			}
			if !sawRole {
				t.Error("no role chunk")
			}
			if contentAfter {
				t.Error("content after finish_reason")
			}
			if chunks != tc.wantChunks {
				t.Errorf("content chunks = %d, want %d", chunks, tc.wantChunks)
			}
			if got, want := content.String(), plain.Choices[0].Message.Content; got != want {
				t.Errorf("streamed content %q differs from non-streamed %q", got, want)
			}
			if got := len(strings.Fields(content.String())); got != tc.wantTokens {
				t.Errorf("streamed %d words, want %d", got, tc.wantTokens)
			}
			if finish != tc.wantFinish {
				t.Errorf("finish_reason = %q, want %q", finish, tc.wantFinish)
			}
			if tc.includeUsage {
				want := openai.Usage{PromptTokens: promptTokensOf(req), CompletionTokens: tc.wantTokens}
				if usageChunks != 1 || usage.PromptTokens != want.PromptTokens ||
					usage.CompletionTokens != want.CompletionTokens ||
					usage.TotalTokens != want.PromptTokens+want.CompletionTokens {
					t.Errorf("usage chunks = %d, usage = %+v, want one with %+v", usageChunks, usage, want)
				}
			} else if usageChunks != 0 {
				t.Errorf("got %d usage chunks without include_usage", usageChunks)
			}
			st := waitForStats(t, sim, "stream completion", func(s Stats) bool { return s.StreamsCompleted == 1 })
			if st.StreamsStarted != 1 || st.Cancelled != 0 {
				t.Errorf("stats = %+v, want one stream started and none cancelled", st)
			}
		})
	}
}

// TestChatStreamWire checks the bytes of the event stream: the content type,
// that every event is one "data: " line and a blank line, and the final
// [DONE].
func TestChatStreamWire(t *testing.T) {
	_, ts := startSim(t, Config{CompletionTokens: 3})
	resp, body := requestOK(t, ts, http.MethodPost, "/v1/chat/completions",
		`{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`)
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q", ct)
	}
	events := strings.Split(string(body), "\n\n")
	if last := events[len(events)-1]; last != "" {
		t.Fatalf("stream does not end with a blank line: %q", last)
	}
	events = events[:len(events)-1]
	// role, 3 content, finish, usage, [DONE]
	if len(events) != 7 {
		t.Fatalf("got %d events, want 7:\n%s", len(events), body)
	}
	for i, ev := range events {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok || strings.Contains(data, "\n") {
			t.Fatalf("event %d is not a single data line: %q", i, ev)
		}
		if i == len(events)-1 {
			if data != "[DONE]" {
				t.Errorf("last event = %q, want [DONE]", data)
			}
			continue
		}
		var chunk map[string]json.RawMessage
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			t.Fatalf("event %d is not JSON: %v: %s", i, err, data)
		}
		if _, ok := chunk["usage"]; !ok {
			t.Errorf("event %d lacks usage (null expected with include_usage): %s", i, data)
		}
	}
}

func TestChatDeterminism(t *testing.T) {
	_, tsA := startSim(t, Config{Seed: 1})
	_, tsB := startSim(t, Config{Seed: 99})
	ctx := testContext(t)
	a, b := newClient(tsA, "k"), newClient(tsB, "k")

	base := chatRequestFor("gpt-4.1", "What is a relay?")
	first, err := a.CreateChatCompletion(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		client *openai.Client
		req    openai.ChatCompletionRequest
		same   bool
	}{
		{name: "same request again", client: a, req: base, same: true},
		{name: "same request, other server and seed", client: b, req: base, same: true},
		{name: "sampling options do not matter", client: a, req: func() openai.ChatCompletionRequest {
			r := base
			r.Temperature = 0.7
			r.User = "someone"
			return r
		}(), same: true},
		{name: "other prompt", client: a, req: chatRequestFor("gpt-4.1", "What is a gateway?"), same: false},
		{name: "other model", client: a, req: chatRequestFor("gpt-4.1-mini", "What is a relay?"), same: false},
		{name: "other role", client: a, req: func() openai.ChatCompletionRequest {
			r := chatRequestFor("gpt-4.1", "What is a relay?")
			r.Messages[1].Role = openai.ChatMessageRoleAssistant
			return r
		}(), same: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.client.CreateChatCompletion(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if same := got.Choices[0].Message.Content == first.Choices[0].Message.Content; same != tc.same {
				t.Errorf("content %q vs %q: same = %v, want %v",
					got.Choices[0].Message.Content, first.Choices[0].Message.Content, same, tc.same)
			}
			if tail := first.ID[len(first.ID)-8:]; strings.Contains(got.ID, tail) {
				t.Errorf("id %q repeats part of %q: ids must be unique per answer", got.ID, first.ID)
			}
		})
	}
}

func TestChatMultiContentCountsText(t *testing.T) {
	_, ts := startSim(t, Config{})
	req := openai.ChatCompletionRequest{
		Model: "m",
		Messages: []openai.ChatCompletionMessage{{
			Role: openai.ChatMessageRoleUser,
			MultiContent: []openai.ChatMessagePart{
				{Type: openai.ChatMessagePartTypeText, Text: "first part of the text"},
				{Type: openai.ChatMessagePartTypeImageURL, ImageURL: &openai.ChatMessageImageURL{URL: "https://example.invalid/x.png"}},
				{Type: openai.ChatMessagePartTypeText, Text: "second"},
			},
		}},
	}
	resp, err := newClient(ts, "k").CreateChatCompletion(testContext(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if want := promptTokensOf(req); resp.Usage.PromptTokens != want {
		t.Errorf("prompt_tokens = %d, want %d", resp.Usage.PromptTokens, want)
	}
}

// TestChatStreamFlushesEachEvent reads the first event while the server is
// still holding back the second (a long ChunkDelay): that only works if
// events are flushed as written.
func TestChatStreamFlushesEachEvent(t *testing.T) {
	sim, ts := startSim(t, Config{ChunkDelay: math.MaxInt64})
	ctx := testContext(t)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadBytes('\n')
	if err != nil {
		t.Fatalf("read first event: %v", err)
	}
	if !bytes.Contains(line, []byte(`"role":"assistant"`)) {
		t.Errorf("first event = %s, want the role chunk", line)
	}
	resp.Body.Close()
	waitForStats(t, sim, "the abandoned stream to be counted", func(s Stats) bool {
		return s.Cancelled == 1 && s.InFlight == 0
	})
}
