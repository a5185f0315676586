package gateway

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
)

// stallingWriter is a client that stops reading: its first body write
// blocks until resume is closed, as a write to a client whose socket
// buffers are full does.
type stallingWriter struct {
	header  http.Header
	stalled chan struct{} // closed when the first write blocks
	resume  chan struct{}
	once    sync.Once
	mu      sync.Mutex
	body    bytes.Buffer
}

func (w *stallingWriter) Header() http.Header { return w.header }
func (w *stallingWriter) WriteHeader(int)     {}
func (w *stallingWriter) Flush()              {}

func (w *stallingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() {
		close(w.stalled)
		<-w.resume
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.body.Write(p)
}

// TestSlowClientIsNotUpstreamIdle: stream_idle_timeout measures the
// upstream's silence only. A client that stops reading for longer than it
// must not make the gateway cut a healthy upstream and charge it a timeout.
func TestSlowClientIsNotUpstreamIdle(t *testing.T) {
	// After the client resumes, the upstream has this long to send the
	// rest: a margin no scheduling delay comes near. (Its data cannot be
	// sent ahead: buffered, it would be read even after a stale timer
	// cancelled the request, and the test would prove nothing.)
	const idle = time.Second
	w := &stallingWriter{header: http.Header{}, stalled: make(chan struct{}), resume: make(chan struct{})}
	up := newFakeUpstream(t, func(n int, rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(rw, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n")
		rw.(http.Flusher).Flush()
		// The rest comes as soon as the client reads again; until then
		// the upstream, like any, waits on the gateway.
		select {
		case <-w.resume:
		case <-r.Context().Done():
			return
		}
		writeSSE(rw, r, 2, 0)
	})
	// breakerN 1: a single failure charged to the upstream opens its
	// circuit, which relaygate_upstream_up shows.
	_, srv, m := newGateway(t, gwOpts{attempts: 1, breakerN: 1, idle: idle.String(), timeout: "1h"}, up)

	req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions",
		strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+testClientKey)
	served := make(chan any, 1)
	go func() {
		// A broken stream ends in panic(http.ErrAbortHandler), which
		// net/http would turn into a cut connection.
		defer func() { served <- recover() }()
		srv.ServeHTTP(w, req)
	}()

	testenv.Receive(t, w.stalled, 30*time.Second, "the first event reaching the client")
	// Several idle timeouts with the client not reading: a timer still
	// running would fire whatever the machine's speed.
	time.Sleep(3 * idle)
	close(w.resume)
	if p := testenv.Receive(t, served, 30*time.Second, "the request finishing"); p != nil {
		t.Errorf("the stream was cut (%v)", p)
	}

	w.mu.Lock()
	body := w.body.String()
	w.mu.Unlock()
	if !strings.HasSuffix(body, "data: [DONE]\n\n") || strings.Contains(body, "stream_interrupted") {
		t.Errorf("want the whole stream, got %q", body)
	}
	for _, result := range []string{"timeout", "error"} {
		if got := metricValue(t, m, "relaygate_upstream_requests_total", map[string]string{"upstream": "a", "result": result}); got != 0 {
			t.Errorf("the upstream was charged %v %s(s) for the client's stall", got, result)
		}
	}
	if got := metricValue(t, m, "relaygate_upstream_up", map[string]string{"upstream": "a"}); got != 1 {
		t.Errorf("relaygate_upstream_up{a} = %v, want 1: the breaker was charged for the client's stall", got)
	}
	if got := up.calls.Load(); got != 1 {
		t.Errorf("the upstream was called %d times, want 1", got)
	}
}
