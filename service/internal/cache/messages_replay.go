package cache

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// message is the part of an Anthropic Messages answer that its stream
// carries.
type message struct {
	ID           string          `json:"id"`
	Type         string          `json:"type"`
	Role         string          `json:"role"`
	Model        string          `json:"model"`
	Content      []contentBlock  `json:"content"`
	StopReason   json.RawMessage `json:"stop_reason"`
	StopSequence json.RawMessage `json:"stop_sequence"`
	Usage        json.RawMessage `json:"usage"`
	Container    json.RawMessage `json:"container,omitempty"`
}

// contentBlock is one block of a message, with the fields each replayable
// kind streams.
type contentBlock struct {
	Type      string          `json:"type"`
	Text      string          `json:"text"`
	Citations json.RawMessage `json:"citations"`
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Input     json.RawMessage `json:"input"`
	Thinking  string          `json:"thinking"`
	Signature string          `json:"signature"`
	Data      string          `json:"data"`
}

// MessagesStreamReplay turns a cached Anthropic message into the events
// its stream would have been, as Anthropic sends them: message_start (the
// message with no content, and its usage less the output tokens, which
// the stream reports at its end), then per block content_block_start, its
// deltas (text_delta; input_json_delta for a tool_use's input;
// thinking_delta and signature_delta), content_block_stop, then
// message_delta (stop reason and output tokens) and message_stop. Each
// event is `event: <type>` and `data: <json>`, then a blank line.
//
// A block it cannot replay exactly (citations, server tools' blocks and
// results, any kind it does not know) is an error, and the caller asks the
// upstream instead: a replay never drops or reshapes content.
func MessagesStreamReplay(body []byte) ([]byte, error) {
	var m message
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("messages replay: cached body is not a message: %w", err)
	}
	if m.Type != "message" {
		return nil, fmt.Errorf("messages replay: cached body is a %q, not a message", m.Type)
	}
	for i, b := range m.Content {
		switch {
		case b.Type == "text" && (len(b.Citations) == 0 || bytes.Equal(b.Citations, jsonNull) || string(b.Citations) == "[]"):
		case b.Type == "tool_use", b.Type == "thinking", b.Type == "redacted_thinking":
		default:
			return nil, fmt.Errorf("messages replay: block %d (%s) cannot be replayed as a stream", i, b.Type)
		}
	}
	var usage map[string]json.RawMessage
	if len(m.Usage) > 0 && !bytes.Equal(m.Usage, jsonNull) {
		if err := json.Unmarshal(m.Usage, &usage); err != nil {
			return nil, fmt.Errorf("messages replay: usage: %w", err)
		}
	}
	output := usage["output_tokens"]
	if output == nil {
		output = json.RawMessage("0")
	}
	startUsage := make(map[string]json.RawMessage, len(usage))
	for k, v := range usage {
		startUsage[k] = v
	}
	startUsage["output_tokens"] = json.RawMessage("0")

	w := &sseWriter{}
	start := m
	start.Content = []contentBlock{}
	start.StopReason, start.StopSequence = jsonNull, jsonNull
	w.named("message_start", struct {
		Type    string `json:"type"`
		Message any    `json:"message"`
	}{"message_start", messageStart{message: start, Usage: startUsage}})
	for i, b := range m.Content {
		w.named("content_block_start", blockEvent{Type: "content_block_start", Index: i, ContentBlock: startBlock(b)})
		switch b.Type {
		case "text":
			for _, piece := range splitText(b.Text) {
				w.named("content_block_delta", deltaEvent(i, msgDelta{Type: "text_delta", Text: &piece}))
			}
		case "tool_use":
			input := string(b.Input)
			if input == "" {
				input = "{}"
			}
			for _, piece := range splitText(input) {
				w.named("content_block_delta", deltaEvent(i, msgDelta{Type: "input_json_delta", PartialJSON: &piece}))
			}
		case "thinking":
			for _, piece := range splitText(b.Thinking) {
				w.named("content_block_delta", deltaEvent(i, msgDelta{Type: "thinking_delta", Thinking: &piece}))
			}
			w.named("content_block_delta", deltaEvent(i, msgDelta{Type: "signature_delta", Signature: &b.Signature}))
		}
		w.named("content_block_stop", blockEvent{Type: "content_block_stop", Index: i})
	}
	stopReason, stopSeq := m.StopReason, m.StopSequence
	if len(stopReason) == 0 {
		stopReason = jsonNull
	}
	if len(stopSeq) == 0 {
		stopSeq = jsonNull
	}
	w.named("message_delta", struct {
		Type  string `json:"type"`
		Delta struct {
			StopReason   json.RawMessage `json:"stop_reason"`
			StopSequence json.RawMessage `json:"stop_sequence"`
		} `json:"delta"`
		Usage map[string]json.RawMessage `json:"usage"`
	}{Type: "message_delta", Delta: struct {
		StopReason   json.RawMessage `json:"stop_reason"`
		StopSequence json.RawMessage `json:"stop_sequence"`
	}{stopReason, stopSeq}, Usage: map[string]json.RawMessage{"output_tokens": output}})
	w.named("message_stop", struct {
		Type string `json:"type"`
	}{"message_stop"})
	if w.err != nil {
		return nil, fmt.Errorf("messages replay: encode event: %w", w.err)
	}
	return w.buf.Bytes(), nil
}

// messageStart is message_start's message: the answer without its
// content, with the usage known at the start.
type messageStart struct {
	message
	Usage map[string]json.RawMessage `json:"usage"`
}

type blockEvent struct {
	Type         string `json:"type"`
	Index        int    `json:"index"`
	ContentBlock any    `json:"content_block,omitempty"`
}

// msgDelta is a content_block_delta's delta: its type, then the one
// field that type carries, in Anthropic's order.
type msgDelta struct {
	Type        string  `json:"type"`
	Text        *string `json:"text,omitempty"`
	PartialJSON *string `json:"partial_json,omitempty"`
	Thinking    *string `json:"thinking,omitempty"`
	Signature   *string `json:"signature,omitempty"`
}

func deltaEvent(index int, delta msgDelta) any {
	return struct {
		Type  string   `json:"type"`
		Index int      `json:"index"`
		Delta msgDelta `json:"delta"`
	}{"content_block_delta", index, delta}
}

// startBlock is a block as content_block_start opens it: text and thinking
// empty, a tool_use with an empty input, a redacted_thinking whole.
func startBlock(b contentBlock) any {
	empty := ""
	switch b.Type {
	case "text":
		return msgDelta{Type: "text", Text: &empty}
	case "tool_use":
		return struct {
			Type  string   `json:"type"`
			ID    string   `json:"id"`
			Name  string   `json:"name"`
			Input struct{} `json:"input"`
		}{Type: "tool_use", ID: b.ID, Name: b.Name}
	case "thinking":
		return msgDelta{Type: "thinking", Thinking: &empty, Signature: &empty}
	}
	return struct {
		Type string `json:"type"`
		Data string `json:"data"`
	}{b.Type, b.Data}
}

// named writes an event with its event: line, as Anthropic's streams have.
func (w *sseWriter) named(event string, v any) {
	if w.err != nil {
		return
	}
	w.buf.WriteString("event: ")
	w.buf.WriteString(event)
	w.buf.WriteByte('\n')
	w.event(v)
}
