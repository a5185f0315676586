package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests in this file speak raw HTTP/1.1 to the command's server, as
// hostile or broken clients do, and check what each connection costs.

// connGuard bounds each raw exchange: a failure guard. A connection the
// gateway has not answered and closed by then is one it would hold for ever.
const connGuard = 15 * time.Second

// connConfig writes a gateway config routing model m to upstream, with
// extra top-level YAML, and returns its path.
func connConfig(t *testing.T, upstream, extra string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "gateway.yaml")
	writeFile(t, path, fmt.Sprintf("listen: \"127.0.0.1:0\"\nclient_keys: [%q]\nshutdown_timeout: 10s\nlog: {level: error}\ngpu: {interval: 1h}\n%s"+
		"upstreams:\n  - {name: one, base_url: %q}\nmodels:\n  - {name: m, route: [one]}\n", relKey, extra, upstream))
	return path
}

// rawResult is what a raw client saw on one connection.
type rawResult struct {
	statuses []int         // every response read, in order
	closed   bool          // the gateway closed the connection
	took     time.Duration // until it closed, or the guard
	err      error         // what ended the reading, when not a close
}

// rawConn sends data on a fresh connection to addr and reads responses
// until the gateway closes it or connGuard passes. It never sends more,
// as a client that announced a body and went silent.
func rawConn(t *testing.T, addr, data string) rawResult {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, connGuard)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	start := time.Now()
	if err := c.SetDeadline(start.Add(connGuard)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, data); err != nil {
		t.Fatalf("write: %v", err)
	}
	var res rawResult
	rd := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(rd, nil)
		if err == nil {
			res.statuses = append(res.statuses, resp.StatusCode)
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if err != nil {
			res.took = time.Since(start)
			var ne net.Error
			switch {
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
				res.closed = true
			case errors.As(err, &ne) && ne.Timeout():
				res.err = fmt.Errorf("still open after %s", connGuard)
			default:
				res.err = err
			}
			return res
		}
	}
}

// TestStalledBodyIsCut: a request that announces a body and never sends
// it is answered and its connection closed within seconds, with a key
// (after body_read_timeout) or without one (at once, after a short grace
// for the body to drain). Before, neither was ever answered nor closed:
// net/http drained the unread body with no deadline.
func TestStalledBodyIsCut(t *testing.T) {
	up := startRelUpstream(t)
	close(up.release)
	addr, sigs, done := startGateway(t, connConfig(t, up.URL, "body_read_timeout: 1s\n"), 0)
	t.Cleanup(func() { relSignal(t, sigs, syscall.SIGTERM); <-done })

	auth := "Authorization: Bearer " + relKey + "\r\n"
	tests := []struct {
		name   string
		head   string
		status int
		within time.Duration // answered and closed within this
	}{
		{"no key, Content-Length", "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: 1000\r\n\r\n", 401, 5 * time.Second},
		{"no key, chunked", "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n", 401, 5 * time.Second},
		{"wrong key", "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer sk-wrong-wrong-wrong-wrong\r\nContent-Length: 1000\r\n\r\n", 401, 5 * time.Second},
		{"GET with a key", "GET /v1/chat/completions HTTP/1.1\r\nHost: g\r\n" + auth + "Content-Length: 1000\r\n\r\n", 405, 5 * time.Second},
		{"unknown path", "POST /v1/nothing HTTP/1.1\r\nHost: g\r\nContent-Length: 1000\r\n\r\n", 404, 5 * time.Second},
		{"health with a body", "POST /health HTTP/1.1\r\nHost: g\r\nContent-Length: 1000\r\n\r\n", 200, 5 * time.Second},
		{"key, Content-Length", "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n" + auth + "Content-Length: 1000\r\n\r\n", 400, 6 * time.Second},
		{"key, half a body", "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n" + auth + "Content-Length: 1000\r\n\r\n{\"model\":\"m\",", 400, 6 * time.Second},
		{"key, chunked", "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n" + auth + "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"mod\r\n", 400, 6 * time.Second},
		{"key, body over max_body_bytes", "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n" + auth + "Content-Length: 20000000\r\n\r\n", 413, 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := rawConn(t, addr, tt.head)
			t.Logf("answers %v, closed %t after %s", res.statuses, res.closed, res.took.Round(time.Millisecond))
			if len(res.statuses) != 1 || res.statuses[0] != tt.status {
				t.Errorf("answers %v, want one %d", res.statuses, tt.status)
			}
			if !res.closed {
				t.Fatalf("the gateway did not close the connection: %v", res.err)
			}
			if res.took > tt.within {
				t.Errorf("closed after %s, want within %s", res.took, tt.within)
			}
		})
	}
}

// TestTransferEncodingClosesTheConnection: RFC 9112 §6.1: a request with
// both Content-Length and Transfer-Encoding may be an attempt at request
// smuggling, and the server must close the connection after answering it.
// net/http drops the Content-Length before the handler sees the request,
// so the gateway closes after every request framed by Transfer-Encoding: a
// request pipelined after it is never answered.
func TestTransferEncodingClosesTheConnection(t *testing.T) {
	up := startRelUpstream(t)
	close(up.release)
	addr, sigs, done := startGateway(t, connConfig(t, up.URL, ""), 0)
	t.Cleanup(func() { relSignal(t, sigs, syscall.SIGTERM); <-done })

	const body = `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
	chunked := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body)
	pipelined := "GET /health HTTP/1.1\r\nHost: g\r\n\r\n"
	auth := "Authorization: Bearer " + relKey + "\r\n"
	tests := []struct {
		name, head string
		status     int
	}{
		{"CL and TE", "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n" + auth + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 200},
		{"TE and CL", "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n" + auth + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", 200},
		{"TE folded onto the next line", "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n" + auth + "Content-Length: 4\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", 200},
		{"CL and TE, no key", "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 401},
		{"CL and TE to /health", "POST /health HTTP/1.1\r\nHost: g\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := rawConn(t, addr, tt.head+chunked+pipelined)
			t.Logf("answers %v, closed %t after %s", res.statuses, res.closed, res.took.Round(time.Millisecond))
			if len(res.statuses) == 0 || res.statuses[0] != tt.status {
				t.Fatalf("answers %v, want %d first", res.statuses, tt.status)
			}
			if len(res.statuses) > 1 {
				t.Errorf("the request pipelined after a Transfer-Encoding request was answered (%d): the connection must close", res.statuses[1])
			}
			if !res.closed {
				t.Errorf("the connection stayed open: %v", res.err)
			}
		})
	}

	// A request framed by Content-Length alone keeps its connection.
	res := rawConn(t, addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n"+auth+fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(body), body)+
		pipelined+"GET /health HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
	if len(res.statuses) != 3 || !res.closed {
		t.Errorf("Content-Length alone: answers %v, closed %t (%v); want 3 answers on one connection", res.statuses, res.closed, res.err)
	}
}

// procStats reads a process's open descriptors and resident memory.
func procStats(pid int) (fds int, rssKB, hwmKB int64, err error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("reading fds: %w", err)
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("reading status: %w", err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			_, _ = fmt.Sscan(v, &rssKB)
		}
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			_, _ = fmt.Sscan(v, &hwmKB)
		}
	}
	return len(ents), rssKB, hwmKB, nil
}

// TestDrainAnswersOnIdleKeepAliveConnections: a client holding an idle
// keep-alive connection at SIGTERM may still send on it while the drain
// runs, and is answered, with Connection: close, instead of having the
// connection closed under its request. Before, the drain closed idle
// connections at once, and such a request failed unread.
func TestDrainAnswersOnIdleKeepAliveConnections(t *testing.T) {
	up := startRelUpstream(t)
	close(up.release)
	// A long idle grace, so the test does not race it on a slow machine.
	addr, sigs, done := startGateway(t, connConfig(t, up.URL, "shutdown_idle_timeout: 20s\n"), 0)
	exited := false
	t.Cleanup(func() {
		if exited {
			return
		}
		select {
		case sigs <- syscall.SIGTERM: // still running, or draining: a second signal cuts it
			<-done
		case <-done: // exited already
		case <-time.After(relGuard):
			t.Error("the gateway did not stop")
		}
	})

	c, err := net.DialTimeout("tcp", addr, connGuard)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(connGuard)); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(c)
	const body = `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
	send := func() *http.Response {
		t.Helper()
		req := "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer " + relKey + "\r\n" +
			fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(body), body)
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatalf("sending on the keep-alive connection: %v", err)
		}
		resp, err := http.ReadResponse(rd, nil)
		if err != nil {
			t.Fatalf("the request on the idle keep-alive connection failed unread: %v", err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := send(); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("before SIGTERM: status %d, close %t", resp.StatusCode, resp.Close)
	}

	relSignal(t, sigs, syscall.SIGTERM)
	waitListenerClosed(t, addr)
	resp := send()
	if resp.StatusCode != 200 || !resp.Close {
		t.Errorf("while draining: status %d, Connection: close %t; want 200 with Connection: close", resp.StatusCode, resp.Close)
	}
	if _, err := rd.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("after the Connection: close answer the connection must close: %v", err)
	}
	select {
	case err := <-done:
		exited = true
		if err != nil {
			t.Errorf("shutdown: %v", err)
		}
	case <-time.After(relGuard):
		t.Fatal("the gateway did not exit once its last connection closed")
	}
}
