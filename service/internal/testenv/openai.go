package testenv

import (
	"errors"
	"io"
	"testing"

	openai "github.com/sashabaranov/go-openai"
)

// ReadChatStream reads a go-openai chat stream to its end, closes it and
// returns its chunks in order; an error before the end fails t.
func ReadChatStream(t testing.TB, stream *openai.ChatCompletionStream) []openai.ChatCompletionStreamResponse {
	t.Helper()
	defer stream.Close()
	var chunks []openai.ChatCompletionStreamResponse
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return chunks
		}
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		chunks = append(chunks, chunk)
	}
}
