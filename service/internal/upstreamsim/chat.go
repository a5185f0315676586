package upstreamsim

import (
	"net/http"
	"strconv"
	"time"

	"github.com/tidwall/gjson"
)

// systemFingerprint marks every answer as the simulator's.
const systemFingerprint = "fp_upstreamsim"

var doneEvent = []byte("data: [DONE]\n\n")

// chatRequest is what the simulator needs from a chat completion request.
type chatRequest struct {
	modelRequest
	digest       promptDigest
	maxTokens    int // 0: none asked
	stream       bool
	includeUsage bool
}

// completionTokens is the answer length and whether a limit in the request
// cut it short, which OpenAI reports as finish_reason "length".
func (c *chatRequest) completionTokens() (n int, truncated bool) {
	n = c.cfg.CompletionTokens
	if c.maxTokens > 0 && c.maxTokens < n {
		return c.maxTokens, true
	}
	return n, false
}

func (c *chatRequest) finishReason() string {
	if _, truncated := c.completionTokens(); truncated {
		return "length"
	}
	return "stop"
}

func (s *Server) serveChat(w http.ResponseWriter, r *http.Request) {
	mr, ok := s.admit(w, r)
	if !ok {
		return
	}
	req := chatRequest{modelRequest: mr}
	if !s.parseChat(w, &req) {
		return
	}
	var vr *vllmRequest
	if req.cfg.VLLM {
		v, ok := s.vllmBegin(r.Context(), req.cfg)
		if !ok {
			s.abandon(w)
			return
		}
		vr = &v
	}
	answered := false
	if vr != nil {
		defer func() {
			n, _ := req.completionTokens()
			vr.end(s, answered, estimateTokens(req.digest.textBytes), n)
		}()
	}
	if !s.simulate(w, r, &req.modelRequest) {
		return
	}
	if vr != nil {
		vr.firstToken()
	}
	if req.stream {
		answered = s.streamChat(w, r, &req)
		return
	}
	bp := getBuf()
	defer putBuf(bp)
	*bp = appendChatCompletion(*bp, &req)
	answered = s.answer(w, *bp)
}

// parseChat reads and checks the chat-specific fields, answering 400 itself
// when they are wrong.
func (s *Server) parseChat(w http.ResponseWriter, req *chatRequest) bool {
	messages := req.doc.Get("messages")
	if !messages.IsArray() {
		s.rejectBadRequest(w, "messages", "'messages' is a required property and must be an array.")
		return false
	}
	if isEmptyArray(messages) {
		s.rejectBadRequest(w, "messages", "[] is too short - 'messages'")
		return false
	}
	for _, field := range [...]string{"max_tokens", "max_completion_tokens"} {
		v := req.doc.Get(field)
		if !v.Exists() || v.Type == gjson.Null {
			continue
		}
		if v.Type != gjson.Number || v.Int() < 1 || float64(v.Int()) != v.Num {
			s.rejectBadRequest(w, field, "Invalid '"+field+"': expected an integer of at least 1.")
			return false
		}
		if n := int(v.Int()); req.maxTokens == 0 || n < req.maxTokens {
			req.maxTokens = n
		}
	}
	req.digest = digestMessages(req.model, messages)
	req.stream = req.doc.Get("stream").Type == gjson.True
	req.includeUsage = req.doc.Get("stream_options.include_usage").Type == gjson.True
	return true
}

// appendID appends prefix and 29 random base-62 characters, the shape of
// OpenAI's ids. Three draws give 30 characters' worth (62^10 < 2^64).
func appendID(dst []byte, prefix string, rng *splitMix) []byte {
	const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	dst = append(dst, prefix...)
	for n := 0; n < 29; {
		v := rng.next()
		for j := 0; j < 10 && n < 29; j, n = j+1, n+1 {
			dst = append(dst, alphabet[v%62])
			v /= 62
		}
	}
	return dst
}

func appendUsage(dst []byte, prompt, completion int) []byte {
	dst = append(dst, `{"prompt_tokens":`...)
	dst = strconv.AppendInt(dst, int64(prompt), 10)
	dst = append(dst, `,"completion_tokens":`...)
	dst = strconv.AppendInt(dst, int64(completion), 10)
	dst = append(dst, `,"total_tokens":`...)
	dst = strconv.AppendInt(dst, int64(prompt+completion), 10)
	return append(dst, `,"prompt_tokens_details":{"cached_tokens":0},`+
		`"completion_tokens_details":{"reasoning_tokens":0}}`...)
}

// appendFinish closes the one choice of a chat or legacy completion with
// its finish reason and appends the usage of its n tokens.
func appendFinish(dst []byte, req *chatRequest, n int) []byte {
	dst = append(dst, req.finishReason()...)
	dst = append(dst, `"}],"usage":`...)
	return appendUsage(dst, estimateTokens(req.digest.textBytes), n)
}

// appendChatCompletion appends a whole chat.completion object.
func appendChatCompletion(dst []byte, req *chatRequest) []byte {
	n, _ := req.completionTokens()
	dst = appendID(append(dst, `{"id":"`...), "chatcmpl-", &req.rng)
	dst = append(dst, `","object":"chat.completion","created":`...)
	dst = strconv.AppendInt(dst, time.Now().Unix(), 10)
	dst = append(dst, `,"model":`...)
	dst = appendJSONString(dst, req.model)
	dst = append(dst, `,"choices":[{"index":0,"message":{"role":"assistant","content":"`...)
	dst = appendWords(dst, req.digest.seed, n)
	dst = append(dst, `","refusal":null},"logprobs":null,"finish_reason":"`...)
	dst = appendFinish(dst, req, n)
	return append(dst, `,"system_fingerprint":"`+systemFingerprint+`"}`...)
}

// streamChat answers with Server-Sent Events in OpenAI's
// chat.completion.chunk shape: a role chunk, content chunks, a finish chunk,
// with include_usage a usage chunk, then [DONE]. Each event is flushed as it
// is written. A cut stream is dropped after Config.CutAfterChunks events,
// counting every data event, the role chunk first. It reports whether the
// stream reached [DONE].
func (s *Server) streamChat(w http.ResponseWriter, r *http.Request, req *chatRequest) (completed bool) {
	cfg := req.cfg
	ew, ok := s.startStream(w, r, cfg, hits(&req.rng, cfg.CutRate))
	if !ok {
		return false
	}
	emit, pause := ew.emit, ew.pause

	bp := getBuf()
	defer putBuf(bp)
	b := appendID(append((*bp)[:0], `data: {"id":"`...), "chatcmpl-", &req.rng)
	b = append(b, `","object":"chat.completion.chunk","created":`...)
	b = strconv.AppendInt(b, time.Now().Unix(), 10)
	b = append(b, `,"model":`...)
	b = appendJSONString(b, req.model)
	b = append(b, `,"system_fingerprint":"`+systemFingerprint+`","choices":[`...)
	prefix := len(b)
	// OpenAI puts "usage":null in every chunk when usage was asked for.
	suffix := "]}\n\n"
	if req.includeUsage {
		suffix = `],"usage":null}` + "\n\n"
	}
	defer func() { *bp = b }()

	b = append(b[:prefix], `{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}`...)
	b = append(b, suffix...)
	if !emit(b) {
		return false
	}

	n, _ := req.completionTokens()
	words := newWordStream(req.digest.seed)
	for done := 0; done < n; {
		if !pause() {
			return false
		}
		b = append(b[:prefix], `{"index":0,"delta":{"content":"`...)
		for k := 0; k < cfg.TokensPerChunk && done < n; k, done = k+1, done+1 {
			b = words.appendNext(b)
		}
		b = append(b, `"},"logprobs":null,"finish_reason":null}`...)
		b = append(b, suffix...)
		if !emit(b) {
			return false
		}
	}

	if !pause() {
		return false
	}
	b = append(b[:prefix], `{"index":0,"delta":{},"logprobs":null,"finish_reason":"`...)
	b = append(b, req.finishReason()...)
	b = append(b, `"}`...)
	b = append(b, suffix...)
	if !emit(b) {
		return false
	}

	if req.includeUsage {
		b = append(b[:prefix], `],"usage":`...)
		b = appendUsage(b, estimateTokens(req.digest.textBytes), n)
		b = append(b, "}\n\n"...)
		if !emit(b) {
			return false
		}
	}

	// A cut set beyond the last chunk drops the stream before [DONE].
	return ew.end(doneEvent)
}

// isEmptyArray reports whether an array has no elements, without building the
// slice that Result.Array would.
func isEmptyArray(a gjson.Result) bool {
	empty := true
	a.ForEach(func(_, _ gjson.Result) bool {
		empty = false
		return false
	})
	return empty
}
