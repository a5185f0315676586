package migration

import (
	"testing"

	openai "github.com/sashabaranov/go-openai"
)

// TestChatRequestTokenLimit checks that the limit a prompt sets reaches
// every model in a field the client lets through: max_tokens as written for
// ordinary models, max_completion_tokens for the reasoning models go-openai
// refuses max_tokens for.
func TestChatRequestTokenLimit(t *testing.T) {
	cases := []struct {
		model                 string
		maxTokens, maxCompl   int
		wantMax, wantMaxCompl int
	}{
		{"gpt-4.1", 64, 0, 64, 0},
		{"deepseek-v3.2", 64, 0, 64, 0},
		{"gpt-5-mini", 64, 0, 0, 64},
		{"o3", 64, 0, 0, 64},
		{"o4-mini", 64, 32, 0, 32}, // the prompt's own max_completion_tokens wins
		{"gpt-5", 0, 0, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.model, func(t *testing.T) {
			p := &Prompt{Messages: []openai.ChatCompletionMessage{{Role: "user", Content: "hi"}},
				MaxTokens: tc.maxTokens, MaxCompletionTokens: tc.maxCompl}
			req := chatRequest(tc.model, p)
			//lint:ignore SA1019 the field under test
			gotMax := req.MaxTokens
			if gotMax != tc.wantMax || req.MaxCompletionTokens != tc.wantMaxCompl {
				t.Errorf("max_tokens %d, max_completion_tokens %d; want %d, %d", gotMax, req.MaxCompletionTokens, tc.wantMax, tc.wantMaxCompl)
			}
			if err := openai.NewReasoningValidator().Validate(req); err != nil {
				t.Errorf("the client would refuse the request: %v", err)
			}
		})
	}
}
