package gateway

import (
	"bytes"
	"math"
	"net/http"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/relaygate/relaygate/service/internal/route"
)

// Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens)
// goes through the same exchange as chat: routing, retries, fallback,
// breakers, limits, cache and metrics. What differs is here: the headers
// its upstreams need, its usage (cache writes and reads priced apart), the
// point at which its stream is committed to the client, and its errors.

// defaultAnthropicVersion is sent when the client names no API version:
// Anthropic refuses requests without one.
var defaultAnthropicVersion = []string{"2023-06-01"}

// anthropicHeaders passes the client's anthropic-version and anthropic-beta
// to the upstream as they came: they select the API's behaviour (beta
// features, Claude Code's among them), so dropping or merging them would
// change the answer.
func (x *exchange) anthropicHeaders(h http.Header) {
	if v := x.r.Header["Anthropic-Version"]; len(v) > 0 {
		h["Anthropic-Version"] = v
	} else {
		h["Anthropic-Version"] = defaultAnthropicVersion
	}
	if v := x.r.Header["Anthropic-Beta"]; len(v) > 0 {
		h["Anthropic-Beta"] = v
	}
}

// cacheVariant is what besides the body selects the answer: for Messages,
// the API version and beta features the client asked for.
func (x *exchange) cacheVariant() string {
	if x.ep.errorFormat() != formatAnthropic {
		return ""
	}
	h := x.r.Header
	return "anthropic-version=" + strings.Join(h["Anthropic-Version"], ",") +
		"\x00anthropic-beta=" + strings.Join(h["Anthropic-Beta"], ",")
}

// anthropicShaped reports whether an error body is Anthropic's own.
func anthropicShaped(data []byte) bool {
	r := gjson.GetManyBytes(data, "type", "error")
	return r[0].Str == "error" && r[1].IsObject()
}

// messageUsage is a Messages answer's usage as reported so far: a stream
// gives input and cache tokens in message_start and the output count
// (cumulative) in message_delta; a field a later event repeats replaces
// the earlier value.
type messageUsage struct{ input, cacheWrite, cacheRead, output int64 }

// unreported marks a messageUsage field no event has given yet.
const unreported = math.MinInt64

var noMessageUsage = messageUsage{unreported, unreported, unreported, unreported}

// takeMessageUsage records the fields a usage object has and applies them.
func (x *exchange) takeMessageUsage(u gjson.Result) {
	if !u.IsObject() {
		return
	}
	m := &x.msgUsage
	r := gjson.GetMany(u.Raw, "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
	for i, p := range []*int64{&m.input, &m.cacheWrite, &m.cacheRead, &m.output} {
		if r[i].Exists() {
			*p = r[i].Int()
		}
	}
	x.setMessageUsage()
}

// setMessageUsage applies x.msgUsage, unless beyond what the request
// could produce (usage.go): the prompt bound covers input and cache
// tokens together, since every cached token is in the request's body.
func (x *exchange) setMessageUsage() {
	m := x.msgUsage
	in, cw, cr, out := max(m.input, 0), max(m.cacheWrite, 0), max(m.cacheRead, 0), max(m.output, 0)
	negative := func(v int64) bool { return v < 0 && v != unreported }
	if negative(m.input) || negative(m.cacheWrite) || negative(m.cacheRead) || negative(m.output) ||
		in > maxPromptTokens || cw > maxPromptTokens || cr > maxPromptTokens {
		// Checked apart, so that no sum of absurd counts can wrap
		// around into a believable one.
		x.usageKnown, x.usageSuspicious = false, true
		x.suspectUsage = [2]int64{in + cw + cr, out}
		return
	}
	x.setUsage(in+cw+cr, out, 0)
	if x.usageKnown {
		x.cacheWrite, x.cacheRead = int(cw), int(cr)
	}
}

// billed is the finished request's usage as vendors bill it: prompt
// tokens that wrote or read the upstream's prompt cache at those prices,
// the rest as input. (OpenAI's APIs report reads only.)
func (x *exchange) billed() route.Usage {
	return route.Usage{Input: x.prompt - x.cacheWrite - x.cacheRead, CacheWrite: x.cacheWrite,
		CacheRead: x.cacheRead, Output: x.completion}
}

// messageEventType is an event's type: its event: line, which Anthropic
// always sends, else its data's "type". The string views ev.
func messageEventType(ev []byte) string {
	for rest := ev; len(rest) > 0; {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		if v, ok := bytes.CutPrefix(line, []byte("event:")); ok {
			return bytesToString(bytes.TrimSpace(v))
		}
		if bytes.HasPrefix(line, []byte("data:")) {
			break
		}
	}
	return gjson.GetBytes(eventData(ev), "type").Str
}

// messagesCommit finds the stream's commit point in held events b: the
// first event that carries content (a content_block_delta, or a block
// that starts with content of its own: tool_use, server tools' blocks,
// redacted thinking; text and thinking blocks start empty and their deltas
// follow). message_start, ping and empty block starts before it are held,
// so that an error event (failed, its bytes) or a cut there can still be
// retried or fall back. At most one of commit and failed is set.
func messagesCommit(b []byte) (commit bool, failed []byte) {
	for i := 0; i < len(b); {
		end := nextEvent(b, i)
		ev := b[i:end]
		i = end
		switch messageEventType(ev) {
		case "content_block_delta":
			return true, nil
		case "content_block_start":
			blk := gjson.GetBytes(eventData(ev), "content_block")
			switch t := blk.Get("type").Str; {
			case t == "text" && blk.Get("text").Str == "", t == "thinking" && blk.Get("thinking").Str == "":
			default:
				return true, nil
			}
		case "error":
			return false, ev
		}
	}
	return false, nil
}

// streamErrorText is what an upstream's error event says, for the failure
// report, less the upstream's key.
func streamErrorText(ev []byte, key string) string {
	e := gjson.GetManyBytes(eventData(ev), "error.type", "error.message")
	msg := e[0].Str
	if e[1].Str != "" {
		msg += ": " + e[1].Str
	}
	return scrubErrorText(msg, key, errorTextLimit, false)
}

// writeMessageEvents writes whole Messages events to the client as they
// came, and reads from them the usage, the stream's end (message_stop) and
// whether the upstream sent an error event.
func (x *exchange) writeMessageEvents(b []byte) error {
	_, err := x.w.Write(b)
	for i := 0; i < len(b); {
		end := nextEvent(b, i)
		ev := b[i:end]
		i = end
		switch messageEventType(ev) {
		case "content_block_delta", "ping", "content_block_start", "content_block_stop":
		case "message_start":
			x.takeMessageUsage(gjson.GetBytes(eventData(ev), "message.usage"))
		case "message_delta":
			x.takeMessageUsage(gjson.GetBytes(eventData(ev), "usage"))
		case "message_stop":
			x.msgStopped = true
		case "error":
			x.upstreamErrSent = true
		}
	}
	return err
}

// readMessageUsage takes usage from a whole Messages answer. A token count
// is free at Anthropic: its answer is recorded as no usage at all, so it
// neither costs nor counts against token limits.
func (x *exchange) readMessageUsage(data []byte) {
	if x.ep == epCountTokens {
		if gjson.GetBytes(data, "input_tokens").Type == gjson.Number {
			x.setUsage(0, 0, 0)
		}
		return
	}
	x.takeMessageUsage(gjson.GetBytes(data, "usage"))
}

// breakAnthropicStream is breakStream for Messages clients: Anthropic's
// error event, unless the upstream's own already reached the client.
func (x *exchange) breakAnthropicStream(msg string) {
	if x.upstreamErrSent {
		return
	}
	_, _ = x.w.Write([]byte("event: error\ndata: "))
	_, _ = x.w.Write(anthropicErrorBody(http.StatusBadGateway, msg))
	_, _ = x.w.Write([]byte("\n\n"))
}
