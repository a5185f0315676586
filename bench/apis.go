package bench

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"
)

// streamAPI is what differs between the stream APIs the suite measures
// (Chat Completions, Anthropic Messages, OpenAI Responses): where the
// request goes, what it says and how it authenticates, and which events
// carry content and which ends the stream. Pacing, timing and the
// held-back judgement are shared, so the APIs are measured alike.
type streamAPI struct {
	// name labels the API in the report: chat, messages, responses.
	name string
	path string
	body func(r role, tokens int) []byte
	// header sets the request's headers; auth is the subject's
	// "Bearer <key>".
	header func(h http.Header, auth string)
	// classify tells a content event from a last one from the others;
	// event is the SSE event: field before the data (empty when none).
	classify func(event, data []byte) eventClass
	// framing is how many events a whole stream has besides its content
	// events (one per chunk).
	framing int
}

type eventClass int

const (
	eventOther eventClass = iota
	eventContent
	eventLast
)

// The simulator's stream shapes, each paced chunkDelay apart from the event
// before the first content event to the one after the last:
//
//	chat:      role, tokens × content, finish, usage, [DONE]
//	messages:  message_start + ping, content_block_start, tokens × content_block_delta,
//	           content_block_stop, message_delta, message_stop
//	responses: created, in_progress, output_item.added, content_part.added,
//	           tokens × output_text.delta, output_text.done, content_part.done,
//	           output_item.done, completed
var (
	apiChat = &streamAPI{
		name: "chat", path: "/v1/chat/completions", body: streamBody, header: bearer,
		classify: classifyChat, framing: 4,
	}
	apiMessages = &streamAPI{
		name: "messages", path: "/v1/messages", body: messagesStreamBody, header: anthropicKey,
		classify: byType("content_block_delta", "message_stop"), framing: 6,
	}
	apiResponses = &streamAPI{
		name: "responses", path: "/v1/responses", body: responsesStreamBody, header: bearer,
		classify: byType("response.output_text.delta", "response.completed"), framing: 8,
	}
	// streamAPIs is the order the comparison with chat lists them in.
	streamAPIs = []*streamAPI{apiChat, apiMessages, apiResponses}
)

// The prompt of every stream, the chat body's system and user text in each
// API's own fields.
const (
	systemPrompt = "You are a concise assistant for an operations team."
	userPrompt   = "Summarise in two sentences why a gateway in front of model APIs helps with cost, latency and outages."
)

func messagesStreamBody(r role, tokens int) []byte {
	return []byte(`{"model":"` + r.model() + `","stream":true,"max_tokens":` + strconv.Itoa(tokens) +
		`,"system":"` + systemPrompt + `","messages":[{"role":"user","content":"` + userPrompt + `"}]}`)
}

func responsesStreamBody(r role, tokens int) []byte {
	return []byte(`{"model":"` + r.model() + `","stream":true,"max_output_tokens":` + strconv.Itoa(tokens) +
		`,"instructions":"` + systemPrompt + `","input":"` + userPrompt + `"}`)
}

func bearer(h http.Header, auth string) {
	h["Authorization"] = []string{auth}
}

// anthropicKey authenticates as Anthropic's SDK does, with x-api-key; the
// gateway and the simulator take it as they take a Bearer token.
func anthropicKey(h http.Header, auth string) {
	h["X-Api-Key"] = []string{strings.TrimPrefix(auth, "Bearer ")}
	h["Anthropic-Version"] = []string{"2023-06-01"}
}

// classifyChat: content is a chunk with non-empty delta.content (the role
// chunk's is empty); the stream ends with data: [DONE].
func classifyChat(_, data []byte) eventClass {
	if bytes.HasPrefix(data, []byte("[DONE]")) {
		return eventLast
	}
	if gjson.GetBytes(data, "choices.0.delta.content").Str != "" {
		return eventContent
	}
	return eventOther
}

// byType classifies typed events (Messages, Responses) by the SSE event
// name, or by the data's "type" when a stream sends no event: lines.
func byType(content, last string) func(event, data []byte) eventClass {
	return func(event, data []byte) eventClass {
		typ := string(event)
		if typ == "" {
			typ = gjson.GetBytes(data, "type").Str
		}
		switch typ {
		case content:
			return eventContent
		case last:
			return eventLast
		}
		return eventOther
	}
}
