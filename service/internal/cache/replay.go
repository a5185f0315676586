package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// completion is the part of a chat.completion that a stream carries.
type completion struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           json.RawMessage `json:"created"`
	Model             string          `json:"model"`
	SystemFingerprint json.RawMessage `json:"system_fingerprint"`
	ServiceTier       json.RawMessage `json:"service_tier"`
	Choices           []struct {
		Index   int `json:"index"`
		Message struct {
			Role             string  `json:"role"`
			Content          *string `json:"content"`
			Refusal          *string `json:"refusal"`
			ReasoningContent *string `json:"reasoning_content"` // DeepSeek-style reasoning models
			ToolCalls        []struct {
				ID       string `json:"id"`
				Type     string `json:"type"`
				Function struct {
					Name      string `json:"name"`
					Arguments string `json:"arguments"`
				} `json:"function"`
			} `json:"tool_calls"`
		} `json:"message"`
		FinishReason json.RawMessage `json:"finish_reason"`
	} `json:"choices"`
	Usage json.RawMessage `json:"usage"`
}

// chunk is one chat.completion.chunk event.
type chunk struct {
	ID                string           `json:"id"`
	Object            string           `json:"object"`
	Created           json.RawMessage  `json:"created"`
	Model             string           `json:"model"`
	SystemFingerprint json.RawMessage  `json:"system_fingerprint,omitempty"`
	ServiceTier       json.RawMessage  `json:"service_tier,omitempty"`
	Choices           []chunkChoice    `json:"choices"`
	Usage             *json.RawMessage `json:"usage,omitempty"`
}

type chunkChoice struct {
	Index        int             `json:"index"`
	Delta        delta           `json:"delta"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason json.RawMessage `json:"finish_reason"`
}

type delta struct {
	Role             string          `json:"role,omitempty"`
	Content          *string         `json:"content,omitempty"`
	ReasoningContent *string         `json:"reasoning_content,omitempty"`
	Refusal          *string         `json:"refusal,omitempty"`
	ToolCalls        []toolCallDelta `json:"tool_calls,omitempty"`
}

type toolCallDelta struct {
	Index    int           `json:"index"`
	ID       string        `json:"id,omitempty"`
	Type     string        `json:"type,omitempty"`
	Function functionDelta `json:"function"`
}

type functionDelta struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

var jsonNull = json.RawMessage("null")

// StreamReplay turns a cached non-streamed chat.completion body into the
// Server-Sent Events OpenAI sends for the same answer, so a streamed request
// can be served from a cached non-streamed one. Per choice: a role delta; the
// reasoning, content and refusal texts, each split into a few deltas; each
// tool call (id, type and name, then its arguments in pieces); then the
// finish_reason. With includeUsage (stream_options.include_usage), every
// chunk carries "usage":null and a last chunk with "choices":[] carries the
// usage. Then `data: [DONE]`. Every event is `data: <json>\n\n`.
//
// Log probabilities are not replayed (chunks carry "logprobs":null): they
// belong to tokens, which the replay's pieces are not.
func StreamReplay(completionBody []byte, includeUsage bool) ([]byte, error) {
	var c completion
	if err := json.Unmarshal(completionBody, &c); err != nil {
		return nil, fmt.Errorf("stream replay: cached body is not a chat completion: %w", err)
	}
	if c.Object != "chat.completion" {
		return nil, fmt.Errorf("stream replay: cached body is a %q, not a chat.completion", c.Object)
	}
	if len(c.Choices) == 0 {
		return nil, errors.New("stream replay: cached chat.completion has no choices")
	}

	created := c.Created
	if len(created) == 0 {
		created = json.RawMessage("0")
	}
	var usageNull *json.RawMessage
	if includeUsage {
		usageNull = &jsonNull
	}
	w := &sseWriter{}
	emit := func(choices []chunkChoice, usage *json.RawMessage) {
		w.event(chunk{
			ID:                c.ID,
			Object:            "chat.completion.chunk",
			Created:           created,
			Model:             c.Model,
			SystemFingerprint: c.SystemFingerprint,
			ServiceTier:       c.ServiceTier,
			Choices:           choices,
			Usage:             usage,
		})
	}
	emitDelta := func(index int, d delta, finish json.RawMessage) {
		emit([]chunkChoice{{Index: index, Delta: d, Logprobs: jsonNull, FinishReason: finish}}, usageNull)
	}

	for _, ch := range c.Choices {
		m := ch.Message
		role := m.Role
		if role == "" {
			role = "assistant"
		}
		empty := ""
		emitDelta(ch.Index, delta{Role: role, Content: &empty}, jsonNull)
		for _, piece := range splitText(deref(m.ReasoningContent)) {
			emitDelta(ch.Index, delta{ReasoningContent: &piece}, jsonNull)
		}
		for _, piece := range splitText(deref(m.Content)) {
			emitDelta(ch.Index, delta{Content: &piece}, jsonNull)
		}
		for _, piece := range splitText(deref(m.Refusal)) {
			emitDelta(ch.Index, delta{Refusal: &piece}, jsonNull)
		}
		for i, tc := range m.ToolCalls {
			emitDelta(ch.Index, delta{ToolCalls: []toolCallDelta{{
				Index: i, ID: tc.ID, Type: tc.Type,
				Function: functionDelta{Name: tc.Function.Name},
			}}}, jsonNull)
			for _, piece := range splitText(tc.Function.Arguments) {
				emitDelta(ch.Index, delta{ToolCalls: []toolCallDelta{{
					Index: i, Function: functionDelta{Arguments: piece},
				}}}, jsonNull)
			}
		}
		finish := ch.FinishReason
		if len(finish) == 0 {
			finish = jsonNull
		}
		emitDelta(ch.Index, delta{}, finish)
	}
	if includeUsage {
		usage := c.Usage
		if len(usage) == 0 {
			usage = jsonNull
		}
		emit([]chunkChoice{}, &usage)
	}
	if w.err != nil {
		return nil, fmt.Errorf("stream replay: encode chunk: %w", w.err)
	}
	w.buf.WriteString("data: [DONE]\n\n")
	return w.buf.Bytes(), nil
}

// sseWriter encodes events the way OpenAI does: compact JSON with no HTML
// escaping, one `data:` line each, a blank line after.
type sseWriter struct {
	buf bytes.Buffer
	err error
}

func (w *sseWriter) event(v any) {
	if w.err != nil {
		return
	}
	w.buf.WriteString("data: ")
	enc := json.NewEncoder(&w.buf)
	enc.SetEscapeHTML(false)
	w.err = enc.Encode(v) // ends the line with \n
	w.buf.WriteByte('\n')
}

// Replayed text comes in at most maxPieces pieces of at least minPieceBytes,
// enough for clients to see a stream without multiplying events per byte.
const (
	maxPieces     = 8
	minPieceBytes = 16
)

// splitText cuts s into a few pieces at rune boundaries. Empty s gives none.
func splitText(s string) []string {
	if s == "" {
		return nil
	}
	target := max(minPieceBytes, (len(s)+maxPieces-1)/maxPieces)
	pieces := make([]string, 0, maxPieces)
	for len(s) > target {
		cut := target
		for cut < len(s) && !utf8.RuneStart(s[cut]) {
			cut++
		}
		pieces = append(pieces, s[:cut])
		s = s[cut:]
	}
	if s != "" {
		pieces = append(pieces, s)
	}
	return pieces
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
