// Package netlimit bounds what a listener's connections may cost: how many
// are open in all and per client address, and, for a graceful stop, which
// of them are idle and may be closed without cutting a request.
//
// A connection beyond a limit is accepted and closed at once rather than
// left in the kernel's backlog: blocking Accept would starve every new
// client, /health probes included, while the slots are held. At
// max_connections a new connection first makes room by closing the one
// that has waited longest without a request in flight (idle between
// requests, or new and still sending its headers): a flood of connections
// that send nothing then cannot lock out clients that do, since a
// connection serving a request is never closed to make room.
package netlimit

import (
	"container/list"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Refusal reasons, as Listener.OnRefuse is told them (and as metrics label them).
const (
	ReasonMax      = "max_connections"
	ReasonMaxPerIP = "max_connections_per_ip"
	// ReasonEvicted is a waiting connection closed to make room for a
	// new one at max_connections.
	ReasonEvicted = "evicted_waiting"
)

// Limits are a listener's connection limits; zero turns one off.
type Limits struct {
	Max      int
	MaxPerIP int
}

// Listener is a net.Listener that enforces Limits. Its ConnState method,
// set as the http.Server's ConnState, lets CloseIdle tell idle
// connections from busy ones.
type Listener struct {
	inner  net.Listener
	limits Limits
	// OnOpen is told each change in the number of open connections, and
	// OnRefuse each connection refused or evicted, with its reason; either
	// may be nil. Set them before the first Accept.
	OnOpen   func(delta int)
	OnRefuse func(reason string)

	mu    sync.Mutex
	conns map[*conn]struct{}
	perIP map[netip.Addr]int
	// waiting holds the connections with no request in flight, the one
	// waiting longest in front: the first to close at max_connections.
	waiting list.List

	closeOnce sync.Once
	closeErr  error
}

// Wrap limits ln's connections.
func Wrap(ln net.Listener, limits Limits) *Listener {
	l := &Listener{inner: ln, limits: limits, conns: map[*conn]struct{}{}}
	if limits.MaxPerIP > 0 {
		l.perIP = map[netip.Addr]int{}
	}
	return l
}

// Accept returns the next connection within the limits; those beyond are
// closed as they arrive.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.inner.Accept()
		if err != nil {
			return nil, err
		}
		var ip netip.Addr
		if l.perIP != nil {
			if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
				ip = ta.AddrPort().Addr().Unmap()
			}
		}
		reason := ""
		var tc, evicted *conn
		l.mu.Lock()
		switch {
		case l.perIP != nil && ip.IsValid() && l.perIP[ip] >= l.limits.MaxPerIP:
			reason = ReasonMaxPerIP
		case l.limits.Max > 0 && len(l.conns) >= l.limits.Max && l.waiting.Len() == 0:
			reason = ReasonMax // every connection is serving a request
		default:
			if l.limits.Max > 0 && len(l.conns) >= l.limits.Max {
				evicted = l.waiting.Front().Value.(*conn)
				l.detachLocked(evicted)
			}
			tc = &conn{Conn: c, l: l, ip: ip}
			tc.since.Store(time.Now().UnixNano())
			tc.wait = l.waiting.PushBack(tc)
			l.conns[tc] = struct{}{}
			if l.perIP != nil && ip.IsValid() {
				l.perIP[ip]++
			}
		}
		l.mu.Unlock()
		// Count before closing, so that whoever sees the close (a client,
		// a test) also sees it counted.
		if evicted != nil {
			if l.OnOpen != nil {
				l.OnOpen(-1)
			}
			if l.OnRefuse != nil {
				l.OnRefuse(ReasonEvicted)
			}
			_ = evicted.Conn.Close()
		}
		if tc != nil {
			if l.OnOpen != nil {
				l.OnOpen(1)
			}
			return tc, nil
		}
		if l.OnRefuse != nil {
			l.OnRefuse(reason)
		}
		_ = c.Close()
	}
}

// Close closes the listener; connections already accepted stay open. It
// may be called more than once (http.Server.Shutdown closes it again after
// a drain has): later calls return the first call's result.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.inner.Close() })
	return l.closeErr
}

// Addr is the listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Open is the number of connections open now.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// ConnState records each connection's state and when it entered it; use
// it as http.Server.ConnState.
func (l *Listener) ConnState(c net.Conn, st http.ConnState) {
	tc, ok := c.(*conn)
	if !ok {
		return
	}
	tc.since.Store(time.Now().UnixNano())
	tc.state.Store(int32(st))
	l.mu.Lock()
	defer l.mu.Unlock()
	if tc.closed.Load() {
		return // closed already: it must not come back into waiting
	}
	switch st {
	case http.StateNew, http.StateIdle:
		if tc.wait == nil {
			tc.wait = l.waiting.PushBack(tc)
		} else {
			l.waiting.MoveToBack(tc.wait)
		}
	default:
		if tc.wait != nil {
			l.waiting.Remove(tc.wait)
			tc.wait = nil
		}
	}
}

// CloseIdle closes every connection that has had no request in flight for
// at least idleFor: idle between requests, or new with no request yet. It
// returns how many connections are still open. A draining server calls it
// until none are: closing a keep-alive connection the moment it turns idle
// races with a client already sending its next request on it, which then
// fails unread, while one idle for a while has most likely been let go.
func (l *Listener) CloseIdle(idleFor time.Duration) (open int) {
	cutoff := time.Now().Add(-idleFor).UnixNano()
	var idle []*conn
	l.mu.Lock()
	for c := range l.conns {
		switch http.ConnState(c.state.Load()) {
		case http.StateNew, http.StateIdle:
			if c.since.Load() <= cutoff {
				idle = append(idle, c)
			}
		}
	}
	open = len(l.conns) - len(idle)
	l.mu.Unlock()
	for _, c := range idle {
		_ = c.Close()
	}
	return open
}

// detachLocked stops counting c, which is closed (or about to be) and
// reported by the caller; l.mu is held. It reports whether c was counted.
func (l *Listener) detachLocked(c *conn) bool {
	if !c.closed.CompareAndSwap(false, true) {
		return false
	}
	delete(l.conns, c)
	if c.wait != nil {
		l.waiting.Remove(c.wait)
		c.wait = nil
	}
	if l.perIP != nil && c.ip.IsValid() {
		if n := l.perIP[c.ip] - 1; n > 0 {
			l.perIP[c.ip] = n
		} else {
			delete(l.perIP, c.ip)
		}
	}
	return true
}

// conn counts against its listener's limits until its first Close.
type conn struct {
	net.Conn
	l      *Listener
	ip     netip.Addr
	state  atomic.Int32  // http.ConnState; StateNew (0) until told otherwise
	since  atomic.Int64  // UnixNano of the last state change
	closed atomic.Bool   // set once, under l.mu, when it stops counting
	wait   *list.Element // in l.waiting; guarded by l.mu
}

// Close stops counting c before it closes it, as Accept does.
func (c *conn) Close() error {
	c.l.mu.Lock()
	counted := c.l.detachLocked(c)
	c.l.mu.Unlock()
	if counted && c.l.OnOpen != nil {
		c.l.OnOpen(-1)
	}
	return c.Conn.Close()
}

// CloseWrite keeps net/http's lingering close (half-close, then wait for
// the client to read the answer) working through the wrapper.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
