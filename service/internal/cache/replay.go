package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// envelope is what a chat.completion and each of its chunks carry alike.
// The omitempty tags matter to chunks only: completions are only decoded.
type envelope struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           json.RawMessage `json:"created"`
	Model             string          `json:"model"`
	SystemFingerprint json.RawMessage `json:"system_fingerprint,omitempty"`
	ServiceTier       json.RawMessage `json:"service_tier,omitempty"`
}

// completion is the part of a chat.completion that a stream carries.
type completion struct {
	envelope
	Choices []struct {
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
		Logprobs     json.RawMessage `json:"logprobs"`
		FinishReason json.RawMessage `json:"finish_reason"`
	} `json:"choices"`
	Usage json.RawMessage `json:"usage"`
}

// logprobs is a choice's log probabilities: one entry per token of the
// content and of the refusal.
type logprobs struct {
	Content []json.RawMessage `json:"content"`
	Refusal []json.RawMessage `json:"refusal"`
}

// tokenTexts returns the "token" of each entry, and false when an entry
// has none.
func tokenTexts(entries []json.RawMessage) ([]string, bool) {
	out := make([]string, len(entries))
	for i, e := range entries {
		var t struct {
			Token *string `json:"token"`
		}
		if json.Unmarshal(e, &t) != nil || t.Token == nil {
			return nil, false
		}
		out[i] = *t.Token
	}
	return out, true
}

// tokenPieces splits text into the tokens its log probabilities list, when
// they spell it exactly; ok is false otherwise (or when there are none).
func tokenPieces(text string, entries []json.RawMessage) (pieces []string, ok bool) {
	if len(entries) == 0 || text == "" {
		return nil, false
	}
	toks, ok := tokenTexts(entries)
	if !ok {
		return nil, false
	}
	n := 0
	for _, t := range toks {
		if t == "" || !strings.HasPrefix(text[n:], t) {
			return nil, false
		}
		n += len(t)
	}
	return toks, n == len(text)
}

// chunk is one chat.completion.chunk event.
type chunk struct {
	envelope
	Choices []chunkChoice    `json:"choices"`
	Usage   *json.RawMessage `json:"usage,omitempty"`
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
// Log probabilities are replayed as OpenAI streams them: when a choice's
// logprobs list tokens that spell its content (or refusal) exactly, that
// text comes one token per chunk, each chunk carrying its token's entry
// ({"content":[entry],"refusal":null}). Logprobs that do not line up with
// the text (a token cut mid-character, a server's own shape) are carried
// whole in the choice's first chunk after the role, never dropped.
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

	head := c.envelope
	head.Object = "chat.completion.chunk"
	if len(head.Created) == 0 {
		head.Created = json.RawMessage("0")
	}
	var usageNull *json.RawMessage
	if includeUsage {
		usageNull = &jsonNull
	}
	w := &sseWriter{}
	emit := func(choices []chunkChoice, usage *json.RawMessage) {
		w.event(chunk{envelope: head, Choices: choices, Usage: usage})
	}
	// pending is logprobs still to be carried whole, by the next delta.
	var pending json.RawMessage
	emitLP := func(index int, d delta, lp, finish json.RawMessage) {
		if lp == nil {
			lp, pending = pending, nil
		}
		if lp == nil {
			lp = jsonNull
		}
		emit([]chunkChoice{{Index: index, Delta: d, Logprobs: lp, FinishReason: finish}}, usageNull)
	}
	emitDelta := func(index int, d delta, finish json.RawMessage) { emitLP(index, d, nil, finish) }

	for _, ch := range c.Choices {
		m := ch.Message
		role := m.Role
		if role == "" {
			role = "assistant"
		}
		empty := ""
		emitLP(ch.Index, delta{Role: role, Content: &empty}, jsonNull, jsonNull)
		var lp logprobs
		perToken := false
		if len(ch.Logprobs) > 0 && !bytes.Equal(ch.Logprobs, jsonNull) {
			if json.Unmarshal(ch.Logprobs, &lp) == nil {
				_, cOK := tokenPieces(deref(m.Content), lp.Content)
				_, rOK := tokenPieces(deref(m.Refusal), lp.Refusal)
				// Per token only when every listed token has its place.
				perToken = (cOK || len(lp.Content) == 0) && (rOK || len(lp.Refusal) == 0) && (cOK || rOK)
			}
			if !perToken {
				pending = ch.Logprobs
			}
		}
		for _, piece := range splitText(deref(m.ReasoningContent)) {
			emitDelta(ch.Index, delta{ReasoningContent: &piece}, jsonNull)
		}
		// emitText sends the content or the refusal (kind): a delta per
		// token with that token's logprobs when they spell it, else in
		// splitText's pieces.
		emitText := func(kind, text string, entries []json.RawMessage) {
			field := func(s *string) delta {
				if kind == "refusal" {
					return delta{Refusal: s}
				}
				return delta{Content: s}
			}
			if toks, ok := tokenPieces(text, entries); perToken && ok {
				for i := range toks {
					emitLP(ch.Index, field(&toks[i]), tokenLogprobs(kind, entries[i]), jsonNull)
				}
				return
			}
			for _, piece := range splitText(text) {
				emitDelta(ch.Index, field(&piece), jsonNull)
			}
		}
		emitText("content", deref(m.Content), lp.Content)
		emitText("refusal", deref(m.Refusal), lp.Refusal)
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

// tokenLogprobs is one chunk's logprobs: a single token's entry under kind
// (content or refusal), the other null, as OpenAI streams them.
func tokenLogprobs(kind string, entry json.RawMessage) json.RawMessage {
	other := "refusal"
	if kind == "refusal" {
		other = "content"
	}
	b := make([]byte, 0, len(entry)+40)
	b = append(b, `{"`...)
	b = append(b, kind...)
	b = append(b, `":[`...)
	b = append(b, entry...)
	b = append(b, `],"`...)
	b = append(b, other...)
	b = append(b, `":null}`...)
	return b
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
