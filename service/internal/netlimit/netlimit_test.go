package netlimit

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

const guard = 10 * time.Second

// served wraps a loopback listener with limits and accepts in the
// background; accepted connections arrive on the returned channel.
func served(t *testing.T, limits Limits) (*Listener, <-chan net.Conn, *refusals) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Wrap(inner, limits)
	r := &refusals{}
	l.OnRefuse = r.add
	accepted := make(chan net.Conn, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		close(accepted)
		for c := range accepted {
			c.Close()
		}
	})
	return l, accepted, r
}

type refusals struct {
	mu      sync.Mutex
	reasons []string
}

func (r *refusals) add(reason string) {
	r.mu.Lock()
	r.reasons = append(r.reasons, reason)
	r.mu.Unlock()
}

func (r *refusals) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.reasons...)
}

func dial(t *testing.T, l *Listener) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", l.Addr().String(), guard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByPeer reports whether the listener's side closed c.
func closedByPeer(t *testing.T, c net.Conn) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(guard))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return err != nil
}

// servingIdleNew opens three connections through l and leaves them, in
// order, serving a request, idle since now, and new with no request yet
// (waiting since it was accepted). It returns the client ends.
func servingIdleNew(t *testing.T, l *Listener, accepted <-chan net.Conn) [3]net.Conn {
	t.Helper()
	var clients, conns [3]net.Conn
	for i := range conns {
		clients[i] = dial(t, l)
		conns[i] = <-accepted
	}
	l.ConnState(conns[0], http.StateActive)
	l.ConnState(conns[1], http.StateIdle)
	return clients
}

// leftOpen is nil when the listener's side of c is still open: a short
// read times out rather than ending. Else it is what the read returned.
func leftOpen(c net.Conn) error {
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return fmt.Errorf("the read ended (%v) instead of timing out", err)
}

func TestLimits(t *testing.T) {
	tests := []struct {
		name   string
		limits Limits
		reason string
	}{
		{"max_connections", Limits{Max: 2}, ReasonMax},
		{"max_connections_per_ip", Limits{Max: 10, MaxPerIP: 2}, ReasonMaxPerIP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, accepted, refused := served(t, tt.limits)
			var in []net.Conn
			for range 2 {
				dial(t, l)
				a := <-accepted
				l.ConnState(a, http.StateActive) // serving: never evicted
				in = append(in, a)
			}
			over := dial(t, l)
			if !closedByPeer(t, over) {
				t.Fatal("a connection over the limit was left open")
			}
			if got := refused.list(); len(got) != 1 || got[0] != tt.reason {
				t.Errorf("refusals %v, want one %s", got, tt.reason)
			}
			if l.Open() != 2 {
				t.Errorf("open = %d, want 2", l.Open())
			}
			// Closing one (twice: Close is idempotent) frees one slot.
			in[0].Close()
			in[0].Close()
			if l.Open() != 1 {
				t.Errorf("open = %d after a close, want 1", l.Open())
			}
			c := dial(t, l)
			select {
			case a := <-accepted:
				if _, err := io.WriteString(c, "x"); err != nil {
					t.Fatal(err)
				}
				b := make([]byte, 1)
				_ = a.SetReadDeadline(time.Now().Add(guard))
				if _, err := a.Read(b); err != nil {
					t.Fatalf("the connection let in after a close: %v", err)
				}
			case <-time.After(guard):
				t.Fatal("no connection accepted after one closed")
			}
		})
	}
}

// TestEvictsWaitingAtMax: at max_connections a new connection closes the
// one that has waited longest without a request in flight, so connections
// that send nothing cannot lock out those that do; one serving a request
// is never closed, and with every slot serving, the new one is refused.
func TestEvictsWaitingAtMax(t *testing.T) {
	l, accepted, refused := served(t, Limits{Max: 3})
	clients := servingIdleNew(t, l, accepted)

	// The new one has waited longest: the next connection closes it.
	late := dial(t, l)
	lateConn := <-accepted
	if !closedByPeer(t, clients[2]) {
		t.Fatal("the connection waiting longest was not closed to make room")
	}
	if got := refused.list(); len(got) != 1 || got[0] != ReasonEvicted {
		t.Errorf("refusals %v, want one %s", got, ReasonEvicted)
	}
	if l.Open() != 3 {
		t.Errorf("open = %d, want 3", l.Open())
	}
	// Then the idle one, idle longer than the newcomer.
	dial(t, l)
	second := <-accepted
	if !closedByPeer(t, clients[1]) {
		t.Fatal("the idle connection was not closed to make room")
	}
	// The serving connection and the newcomers are still open.
	if _, err := io.WriteString(late, "x"); err != nil {
		t.Fatal(err)
	}
	_ = lateConn.SetReadDeadline(time.Now().Add(guard))
	if _, err := lateConn.Read(make([]byte, 1)); err != nil {
		t.Fatalf("the newcomer was closed: %v", err)
	}
	if err := leftOpen(clients[0]); err != nil {
		t.Errorf("the serving connection was closed: %v", err)
	}

	// Every slot serving: the next connection is refused, none evicted.
	l.ConnState(lateConn, http.StateActive)
	l.ConnState(second, http.StateActive)
	over := dial(t, l)
	if !closedByPeer(t, over) {
		t.Fatal("a connection over the limit was left open with every slot serving")
	}
	if got := refused.list(); len(got) != 3 || got[2] != ReasonMax {
		t.Errorf("refusals %v, want the last to be %s", got, ReasonMax)
	}
}

func TestCloseIdle(t *testing.T) {
	l, accepted, _ := served(t, Limits{})
	clients := servingIdleNew(t, l, accepted)

	if open := l.CloseIdle(time.Hour); open != 3 {
		t.Fatalf("CloseIdle(1h) left %d open, want all 3", open)
	}
	if open := l.CloseIdle(0); open != 1 {
		t.Fatalf("CloseIdle(0) left %d open, want 1 (the active one)", open)
	}
	for i, want := range []bool{false, true, true} {
		if i == 0 {
			if err := leftOpen(clients[0]); err != nil {
				t.Errorf("the active connection was closed: %v", err)
			}
			continue
		}
		if got := closedByPeer(t, clients[i]); got != want {
			t.Errorf("connection %d closed %t, want %t", i, got, want)
		}
	}
	if l.Open() != 1 {
		t.Errorf("open = %d, want 1", l.Open())
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Wrap(inner, Limits{})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// http.Server.Shutdown closes it again after a drain closed it.
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
}
