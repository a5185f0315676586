package upstreamsim

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/tidwall/gjson"

	"github.com/relaygate/relaygate/internal/ctxsleep"
)

// Header values are shared, preallocated slices assigned straight into the
// header map: it saves the canonicalisation and allocation of Header.Set on
// every response. They have len == cap, so a later Header.Add copies rather
// than writes into them.
var (
	contentTypeJSON        = []string{"application/json"}
	contentTypeEventStream = []string{"text/event-stream"}
	cacheControlNoCache    = []string{"no-cache"}
)

// bufPool holds response and request buffers. Responses are built by
// appending into one of these rather than through encoding/json, which keeps
// the simulator cheap enough to be the upstream in gateway benchmarks.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 4<<10)
	return &b
}}

// maxPooledBuf keeps one huge request from pinning its buffer in the pool.
const maxPooledBuf = 1 << 20

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) > maxPooledBuf {
		return
	}
	*b = (*b)[:0]
	bufPool.Put(b)
}

func appendJSONString(dst []byte, s string) []byte {
	return gjson.AppendJSONString(dst, s)
}

func appendNullableString(dst []byte, s string) []byte {
	if s == "" {
		return append(dst, "null"...)
	}
	return appendJSONString(dst, s)
}

// writeJSON sends body as a complete application/json answer.
func writeJSON(w http.ResponseWriter, status int, body []byte) error {
	h := w.Header()
	h["Content-Type"] = contentTypeJSON
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	_, err := w.Write(body)
	return err
}

// apiError is an error answer in OpenAI's shape:
// {"error":{"message":…,"type":…,"param":null,"code":…}}.
type apiError struct {
	status  int
	typ     string
	code    string // empty encodes as null, as OpenAI does for many errors
	param   string // the offending request field; empty encodes as null
	message string
}

func (e apiError) write(w http.ResponseWriter) error {
	bp := getBuf()
	defer putBuf(bp)
	if _, ok := w.(anthropicWriter); ok {
		*bp = appendAnthropicError(*bp, e.status, e.message)
		return writeJSON(w, e.status, *bp)
	}
	b := append(*bp, `{"error":{"message":`...)
	b = appendJSONString(b, e.message)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, e.typ)
	b = append(b, `,"param":`...)
	b = appendNullableString(b, e.param)
	b = append(b, `,"code":`...)
	b = appendNullableString(b, e.code)
	b = append(b, "}}"...)
	*bp = b
	return writeJSON(w, e.status, b)
}

// failureError is the body of an injected failure. Its message names the
// simulator, so that nobody reading a log mistakes it for a real outage.
func failureError(status int) apiError {
	e := apiError{
		status:  status,
		typ:     "server_error",
		message: "upstream-sim: injected failure (HTTP " + strconv.Itoa(status) + ")",
	}
	switch {
	case status == http.StatusTooManyRequests:
		e.typ, e.code = "requests", "rate_limit_exceeded"
	case status < 500:
		e.typ = "invalid_request_error"
	}
	return e
}

// dropConnection takes the connection away from net/http and closes it
// without finishing the response. With reset, SO_LINGER 0 makes the close
// send a TCP RST, as a crashed or overloaded upstream does; without it the
// peer sees a clean FIN mid-response, so the bytes already flushed still
// arrive (an RST could discard them in flight). Where the connection cannot
// be hijacked (HTTP/2), aborting the handler resets the stream instead.
func dropConnection(w http.ResponseWriter, reset bool) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok && reset {
		// Best effort: if SetLinger fails the close below still ends the
		// exchange, only with a FIN instead of an RST.
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// eventWriter sends a stream's events one at a time, each flushed, and
// ends the stream, counting why, when the client went away or the
// configured cut is due (cutAfter events; 0: no cut).
type eventWriter struct {
	s        *Server
	w        http.ResponseWriter
	r        *http.Request
	rc       *http.ResponseController
	delay    time.Duration
	cut      bool // the cut fault was drawn for this stream
	cutAfter int
	sent     int
}

// startStream sends an event stream's headers and counts it started. With
// cut (the cut fault drawn for this request) the stream is dropped after
// Config.CutAfterChunks events; at 0 it is dropped right after the headers
// and startStream reports false: the stream is over.
func (s *Server) startStream(w http.ResponseWriter, r *http.Request, cfg *settings, cut bool) (*eventWriter, bool) {
	h := w.Header()
	h["Content-Type"] = contentTypeEventStream
	h["Cache-Control"] = cacheControlNoCache
	w.WriteHeader(http.StatusOK)
	s.stats.streamsStarted.Add(1)
	e := &eventWriter{s: s, w: w, r: r, rc: http.NewResponseController(w), delay: cfg.ChunkDelay, cut: cut}
	if cut && cfg.CutAfterChunks == 0 {
		if err := e.rc.Flush(); err != nil {
			s.stats.cancelled.Add(1)
			return nil, false
		}
		s.stats.faultCut.Add(1)
		dropConnection(w, false)
		return nil, false
	}
	if cut {
		e.cutAfter = cfg.CutAfterChunks
	}
	return e, true
}

// write sends b and flushes it, counting a client that went away.
func (e *eventWriter) write(b []byte) bool {
	if _, err := e.w.Write(b); err != nil {
		e.s.stats.cancelled.Add(1)
		return false
	}
	if err := e.rc.Flush(); err != nil {
		e.s.stats.cancelled.Add(1)
		return false
	}
	return true
}

// emit writes one event and reports whether the stream goes on.
func (e *eventWriter) emit(event []byte) bool {
	if !e.write(event) {
		return false
	}
	e.sent++
	if e.cutAfter > 0 && e.sent == e.cutAfter {
		e.s.stats.faultCut.Add(1)
		dropConnection(e.w, false)
		return false
	}
	return true
}

// end closes a stream that sent all its events. A cut drawn beyond the
// last event drops it here, before last; otherwise last (the closing
// event, where the protocol has one outside the count of events) is sent
// and the stream counts as completed. It reports whether it was.
func (e *eventWriter) end(last []byte) bool {
	if e.cut {
		e.s.stats.faultCut.Add(1)
		dropConnection(e.w, false)
		return false
	}
	if last != nil && !e.write(last) {
		return false
	}
	e.s.stats.streamsCompleted.Add(1)
	return true
}

// pause waits the chunk delay between events, or notices a client gone.
func (e *eventWriter) pause() bool {
	if ctxsleep.Sleep(e.r.Context(), e.delay) {
		return true
	}
	e.s.abandon(e.w)
	return false
}
