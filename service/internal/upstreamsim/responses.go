package upstreamsim

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tidwall/gjson"
)

// The simulator speaks OpenAI's Responses API as a provider does: POST
// /v1/responses answers whole or streams typed events (response.created …
// response.completed), and stored responses (store defaults to true) can be
// retrieved, deleted, cancelled and have their input items listed. They
// live in this simulator's memory only, so a previous_response_id or id
// that another simulator created is a 404 here, which is what lets a test
// prove that a follow-up reached the upstream that created its response.

// maxStoredResponses bounds the simulator's memory; the oldest goes first.
const maxStoredResponses = 10_000

// simResponse is one response, with what its JSON is made from.
type simResponse struct {
	id, msgID, rsID string
	model           string
	created         int64
	text            string
	input, cached   int // input tokens, of which served from the "cache"
	output          int // message tokens
	reasoning       int
	truncated       bool
	previousID      string
	store           bool
	background      bool
	status          string
	inputItems      []byte // a JSON array
}

func (r *simResponse) outputTokens() int { return r.output + r.reasoning }

// responseStore holds stored responses in creation order.
type responseStore struct {
	mu    sync.Mutex
	byID  map[string]*simResponse
	order []string
}

func (st *responseStore) get(id string) (*simResponse, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	r, ok := st.byID[id]
	return r, ok
}

func (st *responseStore) put(r *simResponse) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.byID == nil {
		st.byID = map[string]*simResponse{}
	}
	if len(st.order) >= maxStoredResponses {
		delete(st.byID, st.order[0])
		st.order = st.order[1:]
	}
	st.byID[r.id] = r
	st.order = append(st.order, r.id)
}

func (st *responseStore) remove(id string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	_, ok := st.byID[id]
	delete(st.byID, id)
	return ok
}

// setStatus changes a stored response's status under the lock, returning
// a copy to answer with.
func (st *responseStore) update(id string, f func(r *simResponse)) (simResponse, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	r, ok := st.byID[id]
	if !ok {
		return simResponse{}, false
	}
	f(r)
	return *r, true
}

func (s *Server) serveResponses(w http.ResponseWriter, r *http.Request) {
	mr, ok := s.admit(w, r)
	if !ok {
		return
	}
	resp, stream, ok := s.parseResponses(w, &mr)
	if !ok {
		return
	}
	if !s.simulate(w, r, &mr) {
		return
	}
	if resp.store {
		s.responses.put(resp)
	}
	if stream {
		s.streamResponse(w, r, &mr, resp)
		return
	}
	shown := *resp
	if resp.background {
		// Answered queued; it is "done" by the time anyone looks again.
		shown.status = "queued"
		s.responses.update(resp.id, func(r *simResponse) { r.status = "queued" })
	}
	bp := getBuf()
	defer putBuf(bp)
	*bp = appendResponse(*bp, &shown, true)
	s.answer(w, *bp)
}

// parseResponses reads a Responses request and makes its response.
func (s *Server) parseResponses(w http.ResponseWriter, mr *modelRequest) (*simResponse, bool, bool) {
	doc := mr.doc
	cfg := mr.cfg
	resp := &simResponse{model: mr.model, created: time.Now().Unix(), store: doc.Get("store").Type != gjson.False,
		background: doc.Get("background").Type == gjson.True, status: "completed"}
	h := fnvOffset.add(mr.model)
	textBytes := 0
	input := doc.Get("input")
	switch {
	case input.Type == gjson.String:
		h = h.add(input.Str)
		textBytes = len(input.Str)
		items := appendJSONString([]byte(`[{"type":"message","role":"user","content":[{"type":"input_text","text":`), input.Str)
		resp.inputItems = append(items, `}]}]`...)
	case input.IsArray():
		resp.inputItems = []byte(input.Raw)
		d := digestMessages(mr.model, input)
		h = h.add(strconv.FormatUint(d.seed, 16))
		textBytes = d.textBytes
	case input.Exists() && input.Type != gjson.Null:
		s.rejectBadRequest(w, "input", "Invalid type for 'input': expected a string or an array of input items.")
		return nil, false, false
	default:
		resp.inputItems = []byte("[]")
	}
	if prev := doc.Get("previous_response_id"); prev.Type == gjson.String && prev.Str != "" {
		p, ok := s.responses.get(prev.Str)
		if !ok {
			s.reject(w, &s.stats.badRequest, apiError{status: http.StatusNotFound, param: "previous_response_id",
				code: "previous_response_not_found", message: fmt.Sprintf("Previous response with id '%s' not found.", prev.Str)})
			return nil, false, false
		}
		resp.previousID = p.id
		// The earlier turns are context again, and the provider's prompt
		// cache serves them.
		resp.cached = p.input + p.outputTokens()
		h = h.add(p.id)
	}
	resp.input = estimateTokens(textBytes) + resp.cached
	resp.output, resp.reasoning = cfg.CompletionTokens, cfg.ReasoningTokens
	if v := doc.Get("max_output_tokens"); v.Exists() && v.Type != gjson.Null {
		if v.Type != gjson.Number || v.Int() < 1 || float64(v.Int()) != v.Num {
			s.rejectBadRequest(w, "max_output_tokens", "Invalid 'max_output_tokens': expected an integer of at least 1.")
			return nil, false, false
		}
		budget := int(v.Int())
		resp.reasoning = min(resp.reasoning, budget)
		if resp.output > budget-resp.reasoning {
			resp.output, resp.truncated = budget-resp.reasoning, true
			resp.status = "incomplete"
		}
	}
	resp.text = string(appendWords(nil, uint64(h), resp.output))
	resp.id = string(appendID(nil, "resp_", &mr.rng))
	resp.msgID = string(appendID(nil, "msg_", &mr.rng))
	resp.rsID = string(appendID(nil, "rs_", &mr.rng))
	return resp, doc.Get("stream").Type == gjson.True, true
}

// appendResponse appends the response object; whole says whether its output
// and usage are in (response.created shows neither yet).
func appendResponse(dst []byte, r *simResponse, whole bool) []byte {
	dst = append(dst, `{"id":"`...)
	dst = append(dst, r.id...)
	dst = append(dst, `","object":"response","created_at":`...)
	dst = strconv.AppendInt(dst, r.created, 10)
	status := r.status
	if !whole {
		status = "in_progress"
	}
	dst = append(dst, `,"status":"`...)
	dst = append(dst, status...)
	dst = append(dst, `","background":`...)
	dst = strconv.AppendBool(dst, r.background)
	dst = append(dst, `,"error":null,"incomplete_details":`...)
	if r.truncated && whole && status == "incomplete" {
		dst = append(dst, `{"reason":"max_output_tokens"}`...)
	} else {
		dst = append(dst, "null"...)
	}
	dst = append(dst, `,"instructions":null,"max_output_tokens":null,"model":`...)
	dst = appendJSONString(dst, r.model)
	dst = append(dst, `,"output":[`...)
	if whole && status != "queued" && status != "cancelled" {
		if r.reasoning > 0 {
			dst = appendReasoningItem(dst, r)
			dst = append(dst, ',')
		}
		dst = appendMessageItem(dst, r, "completed")
	}
	dst = append(dst, `],"parallel_tool_calls":true,"previous_response_id":`...)
	dst = appendNullableString(dst, r.previousID)
	dst = append(dst, `,"reasoning":{"effort":null,"summary":null},"store":`...)
	dst = strconv.AppendBool(dst, r.store)
	dst = append(dst, `,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":`...)
	if whole && status != "queued" {
		dst = appendResponseUsage(dst, r)
	} else {
		dst = append(dst, "null"...)
	}
	return append(dst, `,"user":null,"metadata":{}}`...)
}

func appendResponseUsage(dst []byte, r *simResponse) []byte {
	dst = append(dst, `{"input_tokens":`...)
	dst = strconv.AppendInt(dst, int64(r.input), 10)
	dst = append(dst, `,"input_tokens_details":{"cached_tokens":`...)
	dst = strconv.AppendInt(dst, int64(r.cached), 10)
	dst = append(dst, `},"output_tokens":`...)
	dst = strconv.AppendInt(dst, int64(r.outputTokens()), 10)
	dst = append(dst, `,"output_tokens_details":{"reasoning_tokens":`...)
	dst = strconv.AppendInt(dst, int64(r.reasoning), 10)
	dst = append(dst, `},"total_tokens":`...)
	dst = strconv.AppendInt(dst, int64(r.input+r.outputTokens()), 10)
	return append(dst, '}')
}

func appendReasoningItem(dst []byte, r *simResponse) []byte {
	dst = append(dst, `{"id":"`...)
	dst = append(dst, r.rsID...)
	return append(dst, `","type":"reasoning","summary":[]}`...)
}

func appendOutputText(dst []byte, text string) []byte {
	dst = append(dst, `{"type":"output_text","text":`...)
	dst = appendJSONString(dst, text)
	return append(dst, `,"annotations":[],"logprobs":[]}`...)
}

func appendMessageItem(dst []byte, r *simResponse, status string) []byte {
	dst = append(dst, `{"id":"`...)
	dst = append(dst, r.msgID...)
	dst = append(dst, `","type":"message","status":"`...)
	dst = append(dst, status...)
	dst = append(dst, `","role":"assistant","content":[`...)
	if status == "completed" {
		dst = appendOutputText(dst, r.text)
	}
	return append(dst, "]}"...)
}

// streamResponse sends the response as typed events, as OpenAI does:
// created, in_progress, the reasoning item when there is one, the message
// item and its text part, one delta per TokensPerChunk tokens, the done
// events, then response.completed (or response.incomplete). A stream with
// the failed-after-created fault ends with response.failed right after
// response.created and response.in_progress; a cut stream is dropped
// after CutAfterChunks events.
func (s *Server) streamResponse(w http.ResponseWriter, r *http.Request, mr *modelRequest, resp *simResponse) {
	cfg := mr.cfg
	ew, ok := s.startStream(w, r, cfg, hits(&mr.rng, cfg.CutRate))
	if !ok {
		return
	}
	failAfterCreated := hits(&mr.rng, cfg.FailAfterCreatedRate)

	bp := getBuf()
	defer putBuf(bp)
	b := (*bp)[:0]
	defer func() { *bp = b }()
	pause := ew.pause
	// emit writes one event, the data built by body, and reports whether
	// the stream goes on.
	emit := func(typ string, body func(b []byte) []byte) bool {
		b = append(b[:0], "event: "...)
		b = append(b, typ...)
		b = append(b, "\ndata: {\"type\":\""...)
		b = append(b, typ...)
		b = append(b, `","sequence_number":`...)
		b = strconv.AppendInt(b, int64(ew.sent), 10)
		b = body(b)
		b = append(b, "}\n\n"...)
		return ew.emit(b)
	}
	withResponse := func(whole bool) func([]byte) []byte {
		return func(b []byte) []byte { return appendResponse(append(b, `,"response":`...), resp, whole) }
	}
	itemRef := func(b []byte, index int) []byte {
		b = append(b, `,"item_id":"`...)
		b = append(b, resp.msgID...)
		b = append(b, `","output_index":`...)
		b = strconv.AppendInt(b, int64(index), 10)
		return append(b, `,"content_index":0`...)
	}
	if !emit("response.created", withResponse(false)) || !emit("response.in_progress", withResponse(false)) {
		return
	}
	if failAfterCreated {
		s.stats.faultFailedAfterCreated.Add(1)
		s.responses.remove(resp.id)
		emit("response.failed", func(b []byte) []byte {
			b = append(b, `,"response":{"id":"`...)
			b = append(b, resp.id...)
			b = append(b, `","object":"response","status":"failed","model":`...)
			b = appendJSONString(b, resp.model)
			return append(b, `,"output":[],"error":{"code":"server_error","message":"upstream-sim: injected failure after response.created"}}`...)
		})
		return
	}
	msgIndex := 0
	if resp.reasoning > 0 {
		msgIndex = 1
		for _, typ := range []string{"response.output_item.added", "response.output_item.done"} {
			if !emit(typ, func(b []byte) []byte {
				return appendReasoningItem(append(b, `,"output_index":0,"item":`...), resp)
			}) {
				return
			}
		}
	}
	index := func(b []byte) []byte {
		b = append(b, `,"output_index":`...)
		return strconv.AppendInt(b, int64(msgIndex), 10)
	}
	if !emit("response.output_item.added", func(b []byte) []byte {
		return appendMessageItem(append(index(b), `,"item":`...), resp, "in_progress")
	}) {
		return
	}
	if !emit("response.content_part.added", func(b []byte) []byte {
		return append(itemRef(b, msgIndex), `,"part":{"type":"output_text","text":"","annotations":[],"logprobs":[]}`...)
	}) {
		return
	}
	words := strings.SplitAfter(resp.text, " ")
	for i := 0; i < len(words); i += cfg.TokensPerChunk {
		if !pause() {
			return
		}
		delta := strings.Join(words[i:min(i+cfg.TokensPerChunk, len(words))], "")
		if !emit("response.output_text.delta", func(b []byte) []byte {
			return append(appendJSONString(append(itemRef(b, msgIndex), `,"delta":`...), delta), `,"logprobs":[]`...)
		}) {
			return
		}
	}
	if !pause() {
		return
	}
	if !emit("response.output_text.done", func(b []byte) []byte {
		return append(appendJSONString(append(itemRef(b, msgIndex), `,"text":`...), resp.text), `,"logprobs":[]`...)
	}) || !emit("response.content_part.done", func(b []byte) []byte {
		return appendOutputText(append(itemRef(b, msgIndex), `,"part":`...), resp.text)
	}) || !emit("response.output_item.done", func(b []byte) []byte {
		return appendMessageItem(append(index(b), `,"item":`...), resp, "completed")
	}) {
		return
	}
	last := "response.completed"
	if resp.truncated {
		last = "response.incomplete"
	}
	if !emit(last, withResponse(true)) {
		return
	}
	// A cut set beyond the last event drops a stream that was whole.
	ew.end(nil)
}

// serveResponseByID serves GET and DELETE /v1/responses/{id}, POST
// /v1/responses/{id}/cancel and GET /v1/responses/{id}/input_items.
func (s *Server) serveResponseByID(w http.ResponseWriter, r *http.Request, rest string) {
	cfg := s.cfg.Load()
	id, sub, _ := strings.Cut(rest, "/")
	allow := map[string]string{"": "GET, DELETE", "cancel": "POST", "input_items": "GET"}[sub]
	switch {
	case allow == "":
		s.rejectURL(w, r)
		return
	case !strings.Contains(", "+allow+",", ", "+r.Method+","):
		s.rejectMethod(w, r, allow, "")
		return
	case !cfg.authorized(r):
		s.rejectUnauthorized(w)
		return
	}
	// Latency and faults as for a model request: a failing provider fails
	// these too.
	if mr := s.newModelRequest(cfg, gjson.Result{}, ""); !s.simulate(w, r, &mr) {
		return
	}
	notFound := func() {
		s.reject(w, &s.stats.badRequest, apiError{status: http.StatusNotFound,
			message: fmt.Sprintf("Response with id '%s' not found.", id)})
	}
	bp := getBuf()
	defer putBuf(bp)
	b := (*bp)[:0]
	defer func() { *bp = b }()
	switch {
	case sub == "" && r.Method == http.MethodDelete:
		if !s.responses.remove(id) {
			notFound()
			return
		}
		b = append(append(append(b, `{"id":"`...), id...), `","object":"response","deleted":true}`...)
	case sub == "cancel":
		var notBackground bool
		resp, ok := s.responses.update(id, func(r *simResponse) {
			switch {
			case !r.background:
				notBackground = true
			case r.status == "queued" || r.status == "in_progress":
				r.status = "cancelled"
			}
		})
		if !ok {
			notFound()
			return
		}
		if notBackground {
			s.rejectBadRequest(w, "", "Only responses created with background=true can be cancelled.")
			return
		}
		b = appendResponse(b, &resp, true)
	case sub == "input_items":
		resp, ok := s.responses.get(id)
		if !ok {
			notFound()
			return
		}
		b = append(b, `{"object":"list","data":`...)
		b = append(b, resp.inputItems...)
		b = append(b, `,"first_id":null,"last_id":null,"has_more":false}`...)
	default:
		// A queued background response has finished by the time it is
		// looked at again.
		resp, ok := s.responses.update(id, func(r *simResponse) {
			if r.status == "queued" {
				r.status = "completed"
				if r.truncated {
					r.status = "incomplete"
				}
			}
		})
		if !ok {
			notFound()
			return
		}
		b = appendResponse(b, &resp, true)
	}
	s.answer(w, b)
}
