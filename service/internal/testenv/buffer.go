package testenv

import (
	"bytes"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// SyncBuffer is a bytes.Buffer that many goroutines may write at once: the
// place tests collect a gateway's log output, or a child process's output
// from exec's copying goroutines, to read it back.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Count reports how many times substr has been written so far.
func (b *SyncBuffer) Count(substr string) int {
	return strings.Count(b.String(), substr)
}

// Tail returns the last limit bytes written, trimmed, or "(no output)": enough
// of a child's output to show why it died.
func (b *SyncBuffer) Tail(limit int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.Bytes()
	if len(s) > limit {
		s = s[len(s)-limit:]
	}
	if t := strings.TrimSpace(string(s)); t != "" {
		return t
	}
	return "(no output)"
}

// freePort returns a 127.0.0.1 port that was free a moment ago. Another
// process can take it before the caller binds it, so callers retry.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// onFreePort calls start with a free port, and while it fails, again with
// another, up to five tries: the port is found by binding and releasing it,
// so another process can take it before the server binds it, and a few
// tries make that race harmless. try counts from 0. It fails the test when
// no try starts what.
func onFreePort(t testing.TB, what string, start func(try, port int) error) {
	t.Helper()
	var lastErr error
	for try := range 5 {
		port, err := freePort()
		if err != nil {
			t.Fatalf("testenv: find a free port for %s: %v", what, err)
		}
		if lastErr = start(try, port); lastErr == nil {
			return
		}
	}
	t.Fatalf("testenv: %s did not start: %v", what, lastErr)
}

// retryFor calls start, and every pause again while it fails, until it
// succeeds or timeout has passed; it returns start's last error. A server
// restarted on its old port needs it: the kernel may hold the port a while
// after the old process died.
func retryFor(timeout, pause time.Duration, start func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := start()
		if err == nil || !time.Now().Before(deadline) {
			return err
		}
		time.Sleep(pause)
	}
}
