package upstreamsim

import (
	"net/http"
	"strconv"
	"sync"

	"github.com/tidwall/gjson"

	"github.com/relaygate/relaygate/service/internal/anthropicapi"
)

// The simulator speaks Anthropic's Messages API too (POST /v1/messages,
// /v1/messages/count_tokens): whole answers and streams with Anthropic's
// event sequence, usage with prompt-cache tokens, tool calls, and errors
// in Anthropic's shape.
//
// Prompt caching is simulated as Anthropic bills it: the text up to the
// last block marked with cache_control is the cached prefix. The first
// request with a prefix pays for writing it (cache_creation_input_tokens);
// later ones with the same prefix read it (cache_read_input_tokens);
// input_tokens is the rest. A tool call is answered when tool_choice is
// "any" or names a tool: a tool_use block whose input is {"query": words}.

// anthropicWriter marks a response as a Messages one, so apiError.write
// answers in Anthropic's shape.
type anthropicWriter struct{ http.ResponseWriter }

// Unwrap lets http.ResponseController flush and hijack through it.
func (w anthropicWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func appendAnthropicError(dst []byte, status int, message string) []byte {
	dst = append(dst, `{"type":"error","error":{"type":"`...)
	dst = append(dst, anthropicapi.ErrorType(status)...)
	dst = append(dst, `","message":`...)
	dst = appendJSONString(dst, message)
	return append(dst, "}}"...)
}

// maxCachedPrefixes bounds the prompt cache's memory; when full it is
// emptied, as a provider's cache expires.
const maxCachedPrefixes = 4096

// promptCache remembers the cached prefixes seen.
type promptCache struct {
	mu   sync.Mutex
	seen map[uint64]struct{}
}

// hit records prefix and reports whether it was seen before.
func (c *promptCache) hit(prefix uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.seen[prefix]; ok {
		return true
	}
	if c.seen == nil || len(c.seen) >= maxCachedPrefixes {
		c.seen = make(map[uint64]struct{})
	}
	c.seen[prefix] = struct{}{}
	return false
}

func (c *promptCache) reset() {
	c.mu.Lock()
	c.seen = nil
	c.mu.Unlock()
}

// messagesRequest is what the simulator needs from a Messages request.
type messagesRequest struct {
	modelRequest
	seed      uint64
	textBytes int // all text of system and messages
	// prefixBytes and prefix: the text up to the last cache_control
	// block, and its hash (0 bytes: nothing marked).
	prefixBytes int
	prefix      uint64
	maxTokens   int
	stream      bool
	tool        string // the tool to call, "" for a text answer
}

func (s *Server) serveMessages(w http.ResponseWriter, r *http.Request, count bool) {
	w = anthropicWriter{w}
	mr, ok := s.admit(w, r)
	if !ok {
		return
	}
	req := messagesRequest{modelRequest: mr}
	if !s.parseMessages(w, &req, count) {
		return
	}
	if !s.simulate(w, r, &req.modelRequest) {
		return
	}
	bp := getBuf()
	defer putBuf(bp)
	if count {
		b := append(*bp, `{"input_tokens":`...)
		b = strconv.AppendInt(b, int64(estimateTokens(req.textBytes)), 10)
		*bp = append(b, '}')
		s.answer(w, *bp)
		return
	}
	u := s.usageOf(&req)
	if req.stream {
		s.streamMessage(w, r, &req, u)
		return
	}
	*bp = appendMessage(*bp, &req, u)
	s.answer(w, *bp)
}

// parseMessages reads and checks the Messages fields, answering 400 itself
// when they are wrong, as Anthropic does.
func (s *Server) parseMessages(w http.ResponseWriter, req *messagesRequest, count bool) bool {
	messages := req.doc.Get("messages")
	if !messages.IsArray() || isEmptyArray(messages) {
		s.rejectBadRequest(w, "messages", "messages: Field required: a non-empty array")
		return false
	}
	if !count {
		v := req.doc.Get("max_tokens")
		if v.Type != gjson.Number || v.Int() < 1 || float64(v.Int()) != v.Num {
			s.rejectBadRequest(w, "max_tokens", "max_tokens: Field required: an integer of at least 1")
			return false
		}
		req.maxTokens = int(v.Int())
		req.stream = req.doc.Get("stream").Type == gjson.True
	}
	h := fnvOffset.add(req.model)
	n := 0
	addText := func(text string, marked bool) {
		h = h.add(text)
		n += len(text)
		if marked {
			req.prefixBytes, req.prefix = n, uint64(h)
		}
	}
	// blocks reads a content value: a string, or blocks whose text counts.
	blocks := func(content gjson.Result) {
		if content.Type == gjson.String {
			addText(content.Str, false)
			return
		}
		content.ForEach(func(_, b gjson.Result) bool {
			text := b.Get("text")
			if !text.Exists() {
				text = b.Get("content") // a tool_result's text
			}
			if !text.Exists() && b.Get("input").Exists() {
				text = b.Get("input") // a tool_use's arguments, as JSON
				text.Str = text.Raw
			}
			addText(text.String(), b.Get("cache_control").IsObject())
			return true
		})
	}
	blocks(req.doc.Get("system"))
	messages.ForEach(func(_, m gjson.Result) bool {
		h = h.add(m.Get("role").String())
		blocks(m.Get("content"))
		return true
	})
	req.seed, req.textBytes = uint64(h), n

	switch tc := req.doc.Get("tool_choice"); tc.Get("type").Str {
	case "tool":
		req.tool = tc.Get("name").Str
	case "any":
		req.tool = req.doc.Get("tools.0.name").Str
	}
	return true
}

// messageUsage is the request's usage, with the prompt cache consulted.
type messageUsage struct{ input, cacheWrite, cacheRead, output int }

func (s *Server) usageOf(req *messagesRequest) messageUsage {
	var u messageUsage
	u.output, _ = req.outputTokens()
	cached := estimateTokens(req.prefixBytes)
	u.input = estimateTokens(req.textBytes) - cached
	if req.prefixBytes > 0 {
		if s.pcache.hit(req.prefix) {
			u.cacheRead = cached
		} else {
			u.cacheWrite = cached
		}
	}
	return u
}

// outputTokens is the answer's length and whether max_tokens cut it.
func (req *messagesRequest) outputTokens() (int, bool) {
	n := req.cfg.CompletionTokens
	if req.maxTokens < n {
		return req.maxTokens, true
	}
	return n, false
}

func (req *messagesRequest) stopReason() string {
	if _, cut := req.outputTokens(); cut {
		return "max_tokens"
	}
	if req.tool != "" {
		return "tool_use"
	}
	return "end_turn"
}

func appendMessageUsage(dst []byte, u messageUsage, output int) []byte {
	dst = append(dst, `{"input_tokens":`...)
	dst = strconv.AppendInt(dst, int64(u.input), 10)
	dst = append(dst, `,"cache_creation_input_tokens":`...)
	dst = strconv.AppendInt(dst, int64(u.cacheWrite), 10)
	dst = append(dst, `,"cache_read_input_tokens":`...)
	dst = strconv.AppendInt(dst, int64(u.cacheRead), 10)
	dst = append(dst, `,"output_tokens":`...)
	dst = strconv.AppendInt(dst, int64(output), 10)
	return append(dst, '}')
}

// appendMessageHead appends a message object up to its content.
func appendMessageHead(dst []byte, req *messagesRequest) []byte {
	dst = appendID(append(dst, `{"id":"`...), "msg_", &req.rng)
	dst = append(dst, `","type":"message","role":"assistant","model":`...)
	return appendJSONString(dst, req.model)
}

// appendToolBlockStart appends a tool_use block without its input.
func appendToolBlockStart(dst []byte, req *messagesRequest) []byte {
	dst = appendID(append(dst, `{"type":"tool_use","id":"`...), "toolu_", &req.rng)
	dst = append(dst, `","name":`...)
	return appendJSONString(dst, req.tool)
}

// appendMessage appends a whole message.
func appendMessage(dst []byte, req *messagesRequest, u messageUsage) []byte {
	dst = appendMessageHead(dst, req)
	dst = append(dst, `,"content":[`...)
	if req.tool != "" {
		dst = appendToolBlockStart(dst, req)
		dst = append(dst, `,"input":{"query":"`...)
		dst = appendWords(dst, req.seed, u.output)
		dst = append(dst, `"}}`...)
	} else {
		dst = append(dst, `{"type":"text","text":"`...)
		dst = appendWords(dst, req.seed, u.output)
		dst = append(dst, `"}`...)
	}
	dst = append(dst, `],"stop_reason":"`...)
	dst = append(dst, req.stopReason()...)
	dst = append(dst, `","stop_sequence":null,"usage":`...)
	dst = appendMessageUsage(dst, u, u.output)
	return append(dst, '}')
}

// streamMessage answers with Anthropic's events: message_start (with the
// input and cache usage), ping, content_block_start, deltas,
// content_block_stop, message_delta (stop reason, output usage),
// message_stop. Faults: Config.ErrorAfterStartRate sends an error event
// right after message_start and ping, then ends the response; a cut
// (CutRate, CutAfterChunks) counts every event, message_start first.
func (s *Server) streamMessage(w http.ResponseWriter, r *http.Request, req *messagesRequest, u messageUsage) {
	cfg := req.cfg
	ew, ok := s.startStream(w, r, cfg, hits(&req.rng, cfg.CutRate))
	if !ok {
		return
	}
	failAfterStart := hits(&req.rng, cfg.ErrorAfterStartRate)
	emit, pause := ew.emit, ew.pause

	bp := getBuf()
	defer putBuf(bp)
	b := append((*bp)[:0], "event: message_start\ndata: {\"type\":\"message_start\",\"message\":"...)
	b = appendMessageHead(b, req)
	b = append(b, `,"content":[],"stop_reason":null,"stop_sequence":null,"usage":`...)
	b = appendMessageUsage(b, u, 1)
	b = append(b, "}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n"...)
	defer func() { *bp = b }()
	if !emit(b) {
		return
	}
	if failAfterStart {
		s.stats.faultErrorEvent.Add(1)
		b = append(b[:0], "event: error\ndata: "...)
		b = appendAnthropicError(b, 529, "upstream-sim: injected overloaded_error after message_start")
		b = append(b, "\n\n"...)
		if _, err := w.Write(b); err != nil {
			s.stats.cancelled.Add(1)
		}
		return
	}

	b = append(b[:0], "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":"...)
	deltaHead := "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\""
	deltaTail := "\"}}\n\n"
	if req.tool != "" {
		b = appendToolBlockStart(b, req)
		b = append(b, `,"input":{}}}`+"\n\n"...)
		deltaHead = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\""
	} else {
		b = append(b, `{"type":"text","text":""}}`+"\n\n"...)
	}
	if !emit(b) {
		return
	}
	if req.tool != "" {
		// The input's JSON, in pieces: its opening, a piece per chunk of
		// words, its close; each a JSON string inside partial_json.
		if !emit(append(append(b[:0], deltaHead...), `{\"query\": \"`+deltaTail...)) {
			return
		}
	}
	words := newWordStream(req.seed)
	for done := 0; done < u.output; {
		if !pause() {
			return
		}
		b = append(b[:0], deltaHead...)
		for k := 0; k < cfg.TokensPerChunk && done < u.output; k, done = k+1, done+1 {
			b = words.appendNext(b)
		}
		b = append(b, deltaTail...)
		if !emit(b) {
			return
		}
	}
	if req.tool != "" {
		if !emit(append(append(b[:0], deltaHead...), `\"}`+deltaTail...)) {
			return
		}
	}
	if !pause() {
		return
	}
	b = append(b[:0], "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"...)
	if !emit(b) {
		return
	}
	b = append(b[:0], "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\""...)
	b = append(b, req.stopReason()...)
	b = append(b, `","stop_sequence":null},"usage":{"output_tokens":`...)
	b = strconv.AppendInt(b, int64(u.output), 10)
	b = append(b, "}}\n\n"...)
	if !emit(b) {
		return
	}
	ew.end(append(b[:0], "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"...))
}
