package gateway

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// TestOpenAIClient drives the gateway with the unmodified go-openai client,
// as a team's code would after changing only its base URL.
func TestOpenAIClient(t *testing.T) {
	sim := httptest.NewServer(upstreamsim.New(upstreamsim.Config{APIKey: "upstream-key-a", CompletionTokens: 12, TokensPerChunk: 2}))
	t.Cleanup(sim.Close)
	gwSrv, _, m := newGateway(t, gwOpts{}, &fakeUpstream{Server: sim})

	cfg := openai.DefaultConfig(testClientKey)
	cfg.BaseURL = gwSrv.URL + "/v1"
	client := openai.NewClientWithConfig(cfg)
	ctx := context.Background()
	msgs := []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "Say hello"}}

	resp, err := client.CreateChatCompletion(ctx, openai.ChatCompletionRequest{Model: "m", Messages: msgs})
	if err != nil {
		t.Fatalf("completion: %v", err)
	}
	if resp.Object != "chat.completion" || len(resp.Choices) != 1 || resp.Choices[0].Message.Content == "" ||
		resp.Choices[0].FinishReason != openai.FinishReasonStop || resp.Usage.CompletionTokens != 12 {
		t.Errorf("completion = %+v", resp)
	}

	// A stream with usage asked for: the client's view of the usage must be
	// what the gateway counted.
	before := metricValue(t, m, "relaygate_tokens_total", map[string]string{"model": "m", "kind": "completion"})
	stream, err := client.CreateChatCompletionStream(ctx, openai.ChatCompletionRequest{
		Model: "m", Messages: msgs, Stream: true, StreamOptions: &openai.StreamOptions{IncludeUsage: true},
	})
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	var content strings.Builder
	var usage *openai.Usage
	finish := openai.FinishReason("")
	for _, chunk := range testenv.ReadChatStream(t, stream) {
		if chunk.Usage != nil {
			usage = chunk.Usage
		}
		if len(chunk.Choices) > 0 {
			content.WriteString(chunk.Choices[0].Delta.Content)
			if chunk.Choices[0].FinishReason != "" {
				finish = chunk.Choices[0].FinishReason
			}
		}
	}
	if content.Len() == 0 || finish != openai.FinishReasonStop || usage == nil {
		t.Fatalf("stream: content %q finish %q usage %v", content.String(), finish, usage)
	}
	// go-openai stops reading at [DONE], which can be before the gateway's
	// handler has returned and recorded the request: wait for it.
	counted := func() float64 {
		return metricValue(t, m, "relaygate_tokens_total", map[string]string{"model": "m", "kind": "completion"}) - before
	}
	for deadline := time.Now().Add(10 * time.Second); counted() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if got := counted(); got != float64(usage.CompletionTokens) {
		t.Errorf("gateway counted %v completion tokens, the client saw %d", got, usage.CompletionTokens)
	}

	// A stream without usage asked for: every chunk has a choice, so code
	// that reads Choices[0] does not break.
	stream, err = client.CreateChatCompletionStream(ctx, openai.ChatCompletionRequest{Model: "m", Messages: msgs, Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, chunk := range testenv.ReadChatStream(t, stream) {
		if len(chunk.Choices) == 0 {
			t.Fatalf("a chunk without choices reached a client that did not ask for usage: %+v", chunk)
		}
	}

	emb, err := client.CreateEmbeddings(ctx, openai.EmbeddingRequest{Model: "m", Input: []string{"a", "b"}})
	if err != nil || len(emb.Data) != 2 || len(emb.Data[0].Embedding) == 0 {
		t.Errorf("embeddings: %v %+v", err, emb)
	}

	models, err := client.ListModels(ctx)
	if err != nil || len(models.Models) != 1 || models.Models[0].ID != "m" {
		t.Errorf("models: %v %+v", err, models)
	}

	_, err = client.CreateChatCompletion(ctx, openai.ChatCompletionRequest{Model: "nope", Messages: msgs})
	var apiErr *openai.APIError
	if !errors.As(err, &apiErr) || apiErr.HTTPStatusCode != 404 || apiErr.Code != "model_not_found" {
		t.Errorf("unknown model: %v", err)
	}

	bad := openai.DefaultConfig("sk-wrong-key")
	bad.BaseURL = cfg.BaseURL
	_, err = openai.NewClientWithConfig(bad).CreateChatCompletion(ctx, openai.ChatCompletionRequest{Model: "m", Messages: msgs})
	if !errors.As(err, &apiErr) || apiErr.HTTPStatusCode != 401 {
		t.Errorf("wrong key: %v", err)
	}
}
