package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// The tests in this file drive the command's run loop under load, with a
// signal channel the test owns. The channel is unbuffered: a send returns
// once the loop has taken the signal, and a second send returns once the
// loop has finished handling the first, which is how a test knows a
// reload is over without sleeping.

const relKey = "sk-reliability-cmd-key-0123456789"

// relGuard bounds every wait; a failure guard, not an expectation.
const relGuard = 60 * time.Second

// relUpstream is a simulator behind a gate that can hold requests, and that
// records the X-Request-Id of every request it received.
type relUpstream struct {
	sim     *upstreamsim.Server
	URL     string
	release chan struct{}
	held    chan string // the id of each request as it is held

	mu   sync.Mutex
	seen map[string]bool
}

func startRelUpstream(t *testing.T) *relUpstream {
	t.Helper()
	u := &relUpstream{
		sim:     upstreamsim.New(upstreamsim.Config{CompletionTokens: 12, TokensPerChunk: 3, ChunkDelay: time.Millisecond}),
		release: make(chan struct{}),
		held:    make(chan string, 1024),
		seen:    map[string]bool{},
	}
	srv := httptest.NewServer(u)
	t.Cleanup(srv.Close)
	// Held requests must not keep srv.Close waiting if the test fails.
	testenv.CloseAtEnd(t, u.release)
	u.URL = srv.URL + "/v1"
	return u
}

// ServeHTTP holds requests whose id starts with "hold-": a whole answer
// before it starts, a stream after its first event has been flushed.
func (u *relUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("X-Request-Id")
	u.mu.Lock()
	u.seen[id] = true
	u.mu.Unlock()
	if strings.HasPrefix(id, "hold-") {
		if strings.Contains(id, "stream") {
			w = &holdAfterFirstFlush{ResponseWriter: w, u: u, id: id}
		} else {
			u.hold(id)
		}
	}
	u.sim.ServeHTTP(w, r)
}

func (u *relUpstream) hold(id string) {
	u.held <- id
	<-u.release
}

func (u *relUpstream) saw(id string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[id]
}

type holdAfterFirstFlush struct {
	http.ResponseWriter
	u       *relUpstream
	id      string
	flushed bool
}

func (h *holdAfterFirstFlush) FlushError() error {
	err := http.NewResponseController(h.ResponseWriter).Flush()
	if !h.flushed {
		h.flushed = true
		h.u.hold(h.id)
	}
	return err
}

func (h *holdAfterFirstFlush) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// relConfig writes a config whose model m routes to route.
func relConfig(t *testing.T, path string, route string, ups map[string]string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "listen: \"127.0.0.1:0\"\nclient_keys: [%q]\nshutdown_timeout: 60s\nlog: {level: error}\ngpu: {interval: 1h}\nupstreams:\n", relKey)
	for _, name := range []string{"one", "two"} {
		if url, ok := ups[name]; ok {
			fmt.Fprintf(&b, "  - {name: %s, base_url: %q}\n", name, url)
		}
	}
	fmt.Fprintf(&b, "models:\n  - {name: m, route: [%s]}\n", route)
	writeFile(t, path, b.String())
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Write and rename, so a reload never reads half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func relSignal(t *testing.T, sigs chan<- os.Signal, sig os.Signal) {
	t.Helper()
	select {
	case sigs <- sig:
	case <-time.After(relGuard):
		t.Fatalf("the run loop did not take %v", sig)
	}
}

// relOutcome is what one client request came to.
type relOutcome struct {
	id       string
	upstream string // X-Relaygate-Upstream
	err      error  // nil: a whole answer
	// refused: the request never got a response, and failed before any
	// byte of an answer (a refused dial or a connection closed unread).
	refused bool
	dialErr bool
	// closing: the answer asked the client to close its connection.
	closing bool
}

// relDo sends request id and reads the whole answer. Streams (ids with
// "stream") must end with [DONE]. firstEvent, when set, is closed once the
// first event of a stream has arrived.
func relDo(c *http.Client, addr, id string, firstEvent chan<- struct{}) relOutcome {
	stream := strings.Contains(id, "stream")
	body := fmt.Sprintf(`{"model":"m","stream":%t,"messages":[{"role":"user","content":"%s"}]}`, stream, id)
	req, err := http.NewRequestWithContext(context.Background(), "POST", "http://"+addr+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return relOutcome{id: id, err: err}
	}
	req.Header.Set("Authorization", "Bearer "+relKey)
	req.Header.Set("X-Request-Id", id)
	resp, err := c.Do(req)
	if err != nil {
		var op *net.OpError
		dial := errors.As(err, &op) && op.Op == "dial"
		return relOutcome{id: id, err: err, refused: true, dialErr: dial && errors.Is(err, syscall.ECONNREFUSED)}
	}
	defer resp.Body.Close()
	out := relOutcome{id: id, upstream: resp.Header.Get("X-Relaygate-Upstream"), closing: resp.Close}
	rd := bufio.NewReader(resp.Body)
	var all strings.Builder
	if stream && firstEvent != nil {
		line, err := rd.ReadString('\n')
		all.WriteString(line)
		if err != nil {
			out.err = fmt.Errorf("first event: %w", err)
			return out
		}
		close(firstEvent)
	}
	rest, err := io.ReadAll(rd)
	all.Write(rest)
	switch {
	case err != nil:
		out.err = fmt.Errorf("reading the answer: %w", err)
	case resp.StatusCode != http.StatusOK:
		out.err = fmt.Errorf("status %d: %s", resp.StatusCode, all.String())
	case stream && !strings.HasSuffix(all.String(), "data: [DONE]\n\n"):
		out.err = fmt.Errorf("stream incomplete: %q", all.String())
	case !stream && !strings.Contains(all.String(), `"object":"chat.completion"`):
		out.err = fmt.Errorf("not a completion: %q", all.String())
	}
	return out
}

func relClient(t *testing.T, conns int) *http.Client {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: conns, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: relGuard}
}

// waitListenerClosed waits until addr refuses connections.
func waitListenerClosed(t *testing.T, addr string) {
	t.Helper()
	waitFor(t, "the listener closes", func() bool {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		conn.Close()
		return false
	})
}

// TestSIGTERMUnderLoad: a gateway told to stop while clients hammer it
// finishes every request and stream it has taken, closes its listener so
// new requests are refused, and loses none: every request either got its
// whole answer or was refused before the gateway read it (the upstream
// never saw it).
func TestSIGTERMUnderLoad(t *testing.T) {
	up := startRelUpstream(t)
	cfgPath := filepath.Join(t.TempDir(), "gateway.yaml")
	relConfig(t, cfgPath, "one", map[string]string{"one": up.URL})
	addr, sigs, done := startGateway(t, cfgPath, 0)

	const freeWorkers, heldRequests = 16, 8
	warm := 2000
	if raceEnabled {
		warm = 200
	}
	c := relClient(t, freeWorkers+heldRequests)
	var stopping atomic.Bool
	var sent atomic.Int64
	outcomes := make(chan relOutcome, 1<<20)
	var wg sync.WaitGroup
	for w := range freeWorkers {
		wg.Go(func() {
			// Bounded: a worker stops when a connection is refused after
			// SIGTERM, or after far more requests than the test needs.
			for i := 0; i < 100_000; i++ {
				kind := "whole"
				if i%2 == 0 {
					kind = "stream"
				}
				o := relDo(c, addr, fmt.Sprintf("free-%s-%d-%d", kind, w, i), nil)
				sent.Add(1)
				outcomes <- o
				if o.err != nil && (o.dialErr && stopping.Load() || !o.refused) {
					return
				}
			}
		})
	}
	waitFor(t, "requests under load before SIGTERM", func() bool { return sent.Load() >= int64(warm) })

	// Requests and streams in flight at the moment of SIGTERM: held at the
	// upstream, streams after their first event reached the client.
	held := make(chan relOutcome, heldRequests)
	firstEvents := make([]chan struct{}, heldRequests)
	for i := range heldRequests {
		kind := "whole"
		if i%2 == 0 {
			kind = "stream"
		}
		firstEvents[i] = make(chan struct{})
		go func() { held <- relDo(c, addr, fmt.Sprintf("hold-%s-%d", kind, i), firstEvents[i]) }()
	}
	for range heldRequests {
		testenv.Receive(t, up.held, relGuard, "every held request reaching the upstream")
	}
	for i := 0; i < heldRequests; i += 2 {
		testenv.Receive(t, firstEvents[i], relGuard, "each held stream's first event reaching its client")
	}

	stopping.Store(true)
	relSignal(t, sigs, syscall.SIGTERM)
	waitListenerClosed(t, addr)
	close(up.release)

	for range heldRequests {
		o := <-held
		if o.err != nil {
			t.Errorf("request %s, in flight at SIGTERM, did not complete: %v", o.id, o.err)
		}
		if !o.closing && !strings.Contains(o.id, "stream") {
			// A stream's headers went out before SIGTERM; a whole answer's
			// after, so it must tell its client not to send on the
			// connection again.
			t.Errorf("request %s, answered while draining, did not say Connection: close", o.id)
		}
	}
	if err := testenv.Receive(t, done, relGuard, "the gateway exiting after its last request"); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	wg.Wait()
	close(outcomes)

	var ok, dialRefused, closedUnread int
	for o := range outcomes {
		switch {
		case o.err == nil:
			ok++
		case o.refused && !up.saw(o.id):
			if o.dialErr {
				dialRefused++
			} else {
				// A keep-alive connection the gateway closed under a
				// client sending on it: the client sees EOF or a reset for
				// a request nobody read, and cannot tell whether to retry
				// it. The drain must leave clients to close their
				// connections after a Connection: close answer.
				closedUnread++
				if closedUnread <= 3 {
					t.Errorf("closed unread: %s: %v", o.id, o.err)
				}
			}
		default:
			t.Errorf("request %s was lost: the gateway took it (upstream saw it: %t) and answered: %v", o.id, up.saw(o.id), o.err)
		}
	}
	if closedUnread > 0 {
		t.Errorf("%d requests were lost on keep-alive connections the gateway closed unread, want 0", closedUnread)
	}
	if dialRefused != freeWorkers {
		t.Errorf("%d workers saw a refused connection after SIGTERM, want all %d", dialRefused, freeWorkers)
	}
	t.Logf("%d requests under load: %d answered whole, %d refused at connect, %d on a keep-alive connection the gateway closed unread; "+
		"%d held in flight at SIGTERM, all completed", sent.Load(), ok, dialRefused, closedUnread, heldRequests)
}

// TestSIGHUPUnderLoad: reloading the config under load changes routing
// for every request that starts after the reload, fails none, and a broken
// new config, by syntax or by meaning, is refused with the running one kept.
func TestSIGHUPUnderLoad(t *testing.T) {
	one, two := startRelUpstream(t), startRelUpstream(t)
	close(one.release)
	close(two.release)
	ups := map[string]string{"one": one.URL, "two": two.URL}
	cfgPath := filepath.Join(t.TempDir(), "gateway.yaml")
	relConfig(t, cfgPath, "one", ups)
	addr, sigs, done := startGateway(t, cfgPath, 0)

	// phase is what the config in force says at the time a request
	// starts; a request that starts in phase p must be routed as p says.
	var phase atomic.Int32
	wantUpstream := []string{"one", "two", "two", "two"}
	const workers = 16
	perPhase := 1000
	if raceEnabled {
		perPhase = 150
	}
	c := relClient(t, workers)
	var stop atomic.Bool
	var sent atomic.Int64
	type routed struct {
		relOutcome
		phase int32
	}
	results := make(chan routed, 1<<20)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; i < 100_000 && !stop.Load(); i++ {
				p := phase.Load()
				kind := "whole"
				if i%2 == 0 {
					kind = "stream"
				}
				results <- routed{relDo(c, addr, fmt.Sprintf("free-%s-%d-%d", kind, w, i), nil), p}
				sent.Add(1)
			}
		})
	}
	reload := func(next int32, write func()) {
		t.Helper()
		waitFor(t, "requests under load", func() bool { return sent.Load() >= int64(perPhase)*int64(next) })
		write()
		relSignal(t, sigs, syscall.SIGHUP)
		// The second signal is taken only once the first reload is over.
		relSignal(t, sigs, syscall.SIGHUP)
		phase.Store(next)
	}
	reload(1, func() { relConfig(t, cfgPath, "two", ups) })
	reload(2, func() { writeFile(t, cfgPath, "upstreams: [\n") })
	reload(3, func() { relConfig(t, cfgPath, "three", ups) })
	waitFor(t, "requests under load", func() bool { return sent.Load() >= int64(perPhase)*4 })
	stop.Store(true)
	wg.Wait()
	close(results)
	relSignal(t, sigs, syscall.SIGTERM)
	if err := <-done; err != nil {
		t.Errorf("shutdown: %v", err)
	}

	byPhase := map[int32]map[string]int{}
	failed := 0
	for r := range results {
		if r.err != nil {
			failed++
			t.Errorf("request %s in phase %d failed: %v", r.id, r.phase, r.err)
			continue
		}
		if byPhase[r.phase] == nil {
			byPhase[r.phase] = map[string]int{}
		}
		byPhase[r.phase][r.upstream]++
	}
	for p, want := range wantUpstream {
		got := byPhase[int32(p)]
		if p == 0 {
			// Requests that read phase 0 just before the store may land
			// after the reload; most must still have gone to "one".
			if got["one"] == 0 {
				t.Errorf("phase 0: no request went to one: %v", got)
			}
			continue
		}
		if got[want] == 0 || len(got) != 1 {
			t.Errorf("phase %d: answered by %v, want only %s", p, got, want)
		}
	}
	t.Logf("%d requests, %d failed, across a reload and two refused broken configs; by phase and upstream: %v", sent.Load(), failed, byPhase)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, relGuard, what, cond)
}
