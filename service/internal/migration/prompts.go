package migration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	openai "github.com/sashabaranov/go-openai"
)

// Prompt is one request of a prompt set: the messages and the answer-length
// limits sent with them. The same prompt goes to every upstream compared.
type Prompt struct {
	ID                  string                         `json:"id,omitempty"`
	Messages            []openai.ChatCompletionMessage `json:"messages"`
	MaxTokens           int                            `json:"max_tokens,omitempty"`
	MaxCompletionTokens int                            `json:"max_completion_tokens,omitempty"`
}

// promptLine is a line of a prompt file: the OpenAI messages shape, or the
// "prompt" shorthand for a single user message.
type promptLine struct {
	Prompt
	Text string `json:"prompt,omitempty"`
}

// maxPromptLine bounds one line of a prompt file; long-context prompts are
// welcome, a file that is not JSONL at all is not.
const maxPromptLine = 8 << 20

// LoadPrompts reads a JSONL prompt set from path.
func LoadPrompts(path string) ([]Prompt, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("prompts: %w", err)
	}
	defer f.Close()
	ps, err := ParsePrompts(f)
	if err != nil {
		return nil, fmt.Errorf("prompts %s: %w", path, err)
	}
	return ps, nil
}

// ParsePrompts reads a prompt set: one JSON object per line, either
//
//	{"id": "summary", "messages": [{"role": "user", "content": "..."}], "max_tokens": 200}
//
// or the shorthand {"prompt": "...", "max_tokens": 200}. Blank lines are
// skipped. Every line is checked, so a bad file names the line at fault
// before any request is sent (and paid for).
func ParsePrompts(r io.Reader) ([]Prompt, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxPromptLine)
	var (
		out  []Prompt
		errs []error
	)
	for line := 1; sc.Scan(); line++ {
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 {
			continue
		}
		p, err := parsePromptLine(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", line, err))
			continue
		}
		if p.ID == "" {
			p.ID = fmt.Sprintf("line-%d", line)
		}
		out = append(out, p)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(out) == 0 {
		return nil, errors.New("no prompts: the file has no JSON lines")
	}
	return out, nil
}

func parsePromptLine(raw []byte) (Prompt, error) {
	var pl promptLine
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pl); err != nil {
		return Prompt{}, fmt.Errorf("not a prompt object: %w", err)
	}
	if dec.More() {
		return Prompt{}, errors.New("more than one JSON value on the line")
	}
	p := pl.Prompt
	switch {
	case pl.Text != "" && len(p.Messages) > 0:
		return Prompt{}, errors.New(`give "prompt" or "messages", not both`)
	case pl.Text != "":
		p.Messages = []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: pl.Text}}
	case len(p.Messages) == 0:
		return Prompt{}, errors.New(`needs "messages" (OpenAI chat messages) or "prompt" (one user message)`)
	}
	for i, m := range p.Messages {
		if m.Role == "" {
			return Prompt{}, fmt.Errorf("messages[%d]: role is required", i)
		}
	}
	if p.MaxTokens < 0 || p.MaxCompletionTokens < 0 {
		return Prompt{}, errors.New("max_tokens and max_completion_tokens must not be negative")
	}
	return p, nil
}
