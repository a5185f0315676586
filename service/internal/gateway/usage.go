package gateway

import (
	"bytes"
	"log/slog"
	"mime"

	"github.com/tidwall/gjson"
)

// An upstream's usage is what the gateway bills, counts against rate
// limits and reports as cost and savings, so usage that no request could
// produce (a buggy or hostile upstream reporting 2³¹ tokens for a one-line
// prompt) is not believed: it is counted in relaygate_usage_suspicious_total
// and logged, and the answer's tokens and cost stay uncounted, as for an
// answer without usage. Clamping it instead would bill a guess.
//
// The bounds are generous, so that no honest answer goes over them:
//
//   - prompt tokens: a token is at least one byte of the request's text, so
//     the body's size, plus promptSlack for the chat template and system
//     text the upstream adds. Images, files, audio and video the request
//     only refers to (by URL or id) may cost far more tokens than their
//     bytes, and so may context the upstream holds (a Responses
//     follow-up's earlier turns) or fetches (server-side tools): each such
//     reference allows maxReferenceTokens more. Never
//     more than maxPromptTokens, above every model's context.
//   - completion tokens: the request's max_tokens or max_completion_tokens
//     per choice, plus completionSlack; without one, maxCompletionTokens per
//     choice, above every model's output limit. Reasoning tokens the
//     answer reports (completion_tokens_details.reasoning_tokens) are
//     allowed on top, up to maxCompletionTokens per choice: OpenAI counts
//     them within max_completion_tokens, but some servers (DeepSeek's
//     reasoner) bound only the final answer by max_tokens. Embeddings
//     produce none.
const (
	promptSlack         = 4096
	maxReferenceTokens  = 1 << 20
	maxPromptTokens     = 10_000_000
	completionSlack     = 64
	maxCompletionTokens = 1 << 20
	maxChoices          = 128
)

// referenceMarks are the JSON strings (keys, or type values) of inputs a
// request may refer to rather than carry.
var referenceMarks = [][]byte{
	[]byte(`"image_url"`), []byte(`"input_image"`), []byte(`"file"`), []byte(`"file_id"`),
	[]byte(`"input_file"`), []byte(`"input_audio"`), []byte(`"audio_url"`), []byte(`"video_url"`),
	// Anthropic's image and document blocks by URL ({"type":"url","url":…}).
	[]byte(`"url"`),
	// Context the upstream keeps and counts as input: a Responses
	// follow-up's earlier turns, a stored conversation, a reusable prompt.
	[]byte(`"previous_response_id"`), []byte(`"conversation"`), []byte(`"prompt"`),
	// Server-side tools whose results enter the prompt (OpenAI's and
	// Anthropic's web search by any version, file search, MCP, code).
	[]byte(`"web_search`), []byte(`"file_search"`), []byte(`"mcp"`), []byte(`"code_interpreter"`),
}

// promptBound is the most prompt tokens the request could hold.
func promptBound(body []byte) int64 {
	bound := int64(len(body)) + promptSlack
	refs := 0
	for _, m := range referenceMarks {
		refs += bytes.Count(body, m)
	}
	return min(bound+int64(refs)*maxReferenceTokens, maxPromptTokens)
}

// completionBound is the most completion tokens the request could produce,
// given the reasoning tokens the answer reports.
func (x *exchange) completionBound(reasoning int64) int64 {
	if x.ep == epEmbeddings || x.ep == epCountTokens {
		return 0
	}
	n := min(max(x.n, 1), maxChoices)
	if x.maxTokens <= 0 {
		return maxCompletionTokens * n
	}
	per := min(x.maxTokens+completionSlack, maxCompletionTokens)
	return per*n + min(max(reasoning, 0), maxCompletionTokens*n)
}

// believable reports whether usage is within what the request could
// produce. The body is scanned for references only when the prompt count
// is over the body's own size: the common case costs two comparisons.
func (x *exchange) believable(prompt, completion, reasoning int64) bool {
	if prompt < 0 || completion < 0 || completion > x.completionBound(reasoning) {
		return false
	}
	return prompt <= int64(x.reqBytes)+promptSlack || prompt <= promptBound(x.reqBody)
}

// readUsage takes token counts from an answer's usage object; an answer
// without one stays unknown rather than being estimated.
func (x *exchange) readUsage(data []byte) {
	if x.ep.errorFormat() == formatAnthropic {
		x.readMessageUsage(data)
		return
	}
	u := gjson.GetBytes(data, "usage")
	if !u.IsObject() {
		return
	}
	if x.ep == epResponses {
		x.responsesUsage(u)
		return
	}
	if x.ep == epImages {
		// gpt-image-1 counts input_tokens and output_tokens, as the
		// Responses API does.
		i, o := u.Get("input_tokens"), u.Get("output_tokens")
		if i.Exists() || o.Exists() {
			x.setUsage(i.Int(), o.Int(), 0)
		}
		return
	}
	x.chatUsage(u)
}

// chatUsage reads a Chat Completions (or legacy completions, embeddings)
// usage object. Cached prompt tokens (prompt_tokens_details.cached_tokens,
// part of prompt_tokens as OpenAI counts them) are billed at the cache
// read price, as OpenAI bills them; it reports whether u held usage.
func (x *exchange) chatUsage(u gjson.Result) bool {
	p, c := u.Get("prompt_tokens"), u.Get("completion_tokens")
	if !p.Exists() && !c.Exists() {
		return false
	}
	x.cacheRead = int(min(max(u.Get("prompt_tokens_details.cached_tokens").Int(), 0), max(p.Int(), 0)))
	x.setUsage(p.Int(), c.Int(), reasoningTokens(u))
	return true
}

// reasoningTokens is what a usage object says of reasoning tokens (see
// completionBound); 0 when it says nothing.
func reasoningTokens(u gjson.Result) int64 {
	return u.Get("completion_tokens_details.reasoning_tokens").Int()
}

// setUsage records usage the upstream reported, unless it is beyond what
// the request could produce (see above).
func (x *exchange) setUsage(prompt, completion, reasoning int64) {
	if !x.believable(prompt, completion, reasoning) {
		x.usageKnown, x.usageSuspicious = false, true
		x.suspectUsage = [2]int64{prompt, completion}
		return
	}
	x.prompt, x.completion, x.usageKnown, x.usageSuspicious = int(prompt), int(completion), true, false
	x.reasoning = int(max(reasoning, 0))
}

// suspicious counts and logs an answer whose usage was not believed.
func (x *exchange) suspicious() {
	x.s.metrics.UsageSuspicious(x.model)
	x.s.log.LogAttrs(x.r.Context(), slog.LevelWarn, "usage beyond what the request could produce; not counted",
		slog.String("request_id", x.rid), slog.String("model", x.model), slog.String("upstream", x.upstream),
		slog.Int64("prompt_tokens", x.suspectUsage[0]), slog.Int64("completion_tokens", x.suspectUsage[1]),
		slog.Int64("max_tokens", x.maxTokens), slog.Int("request_bytes", x.reqBytes))
}

// cacheableAnswer reports whether a 200 is the endpoint's answer, so it may
// be cached and replayed to everyone asking the same: JSON, declared so,
// and of the endpoint's shape. An HTML page from a proxy or a captive
// portal, or JSON of another kind, passes to this client only.
func cacheableAnswer(ep endpoint, contentType string, data []byte) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "application/json" || !gjson.ValidBytes(data) {
		return false
	}
	switch ep {
	case epChat:
		r := gjson.GetManyBytes(data, "object", "choices")
		return r[0].Str == "chat.completion" && r[1].IsArray() && r[1].Get("0").IsObject()
	case epEmbeddings:
		r := gjson.GetManyBytes(data, "object", "data")
		return r[0].Str == "list" && r[1].IsArray() && r[1].Get("0").IsObject()
	case epMessages:
		r := gjson.GetManyBytes(data, "type", "role", "content")
		return r[0].Str == "message" && r[1].Str == "assistant" && r[2].IsArray()
	case epCompletions:
		r := gjson.GetManyBytes(data, "object", "choices")
		return r[0].Str == "text_completion" && r[1].IsArray() && r[1].Get("0").IsObject()
	case epCountTokens:
		return gjson.GetBytes(data, "input_tokens").Type == gjson.Number
	}
	return false
}
