package gateway

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
)

// TestReloadClosesDroppedPools: a reload that changes an upstream's
// connection settings builds it a new pool; the old pool's connections
// close once the last request that could use them ends, not at their idle
// timeout (before, 20 such reloads left 20 connections open to the
// upstream). A request in flight across the reloads finishes on its old
// connection, and a reload that keeps the pool keeps its connections.
func TestReloadClosesDroppedPools(t *testing.T) {
	var open, total atomic.Int64
	held, release := make(chan struct{}, 1), make(chan struct{})
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if strings.HasPrefix(r.Header.Get("X-Request-Id"), "hold") {
			held <- struct{}{}
			<-release
		}
		okCompletion(0, w, r)
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
			total.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	fake := &fakeUpstream{Server: up}
	srv, gw, _ := newGateway(t, gwOpts{}, fake)

	const body = `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
	inFlight := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testClientKey)
		req.Header.Set("X-Request-Id", "hold-1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			inFlight <- 0
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		inFlight <- resp.StatusCode
	}()
	testenv.Receive(t, held, 30*time.Second, "the held request reaching the upstream")

	const reloads = 20
	for i := range reloads {
		// A new connect_timeout: a new pool for upstream a.
		gw.Reload(gatewayConfig(t, gwOpts{timeout: fmt.Sprintf("%ds", 6+i)}, fake))
		if r := post(t, srv.URL, "/v1/chat/completions", body); r.status != http.StatusOK {
			t.Fatalf("request after reload %d: %d %s", i+1, r.status, r.body)
		}
	}
	close(release)
	if code := <-inFlight; code != http.StatusOK {
		t.Fatalf("the request in flight across the reloads: status %d", code)
	}

	// Left open: the newest pool's one idle connection.
	deadline := time.Now().Add(10 * time.Second)
	for open.Load() != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("after %d reloads that changed the pool: %d connections opened to the upstream, %d still open", reloads, total.Load(), open.Load())
	if n := open.Load(); n != 1 {
		t.Fatalf("%d connections to the upstream still open, want 1 (the current pool's)", n)
	}

	// A reload that keeps the pool keeps its connection.
	opened := total.Load()
	gw.Reload(gatewayConfig(t, gwOpts{timeout: fmt.Sprintf("%ds", 6+reloads-1)}, fake))
	if r := post(t, srv.URL, "/v1/chat/completions", body); r.status != http.StatusOK {
		t.Fatalf("request after a reload that kept the pool: %d", r.status)
	}
	if total.Load() != opened || open.Load() != 1 {
		t.Errorf("a reload that kept the pool: %d new connections, %d open; want the warm one reused", total.Load()-opened, open.Load())
	}
}
