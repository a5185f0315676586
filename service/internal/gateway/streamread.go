package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/relaygate/relaygate/service/internal/route"
)

// upstreamEvents is the reading half of a stream relay, shared by every
// format: a pooled buffer of the events received and not yet passed on,
// and the idle timer.
//
// The idle timer runs only while the gateway waits on the upstream's Read:
// armed before each read, stopped as it returns. Were it left running
// through the writes, a client that stops reading would block them past
// the timeout and the gateway would blame (and retry, and charge the
// breaker of) an upstream that was never silent. Each write to the client
// gets the same idle time as its deadline.
type upstreamEvents struct {
	x         *exchange
	u         *route.Upstream
	resp      *http.Response
	t0        time.Time
	bp        *[]byte
	buf       []byte
	filled    int // buf[:filled] is what has arrived
	idle      time.Duration
	idleFired atomic.Bool
	timer     *time.Timer
	rc        *http.ResponseController
}

// openEvents starts reading resp's stream; cancel ends the upstream
// request when the stream goes idle. The caller defers close.
func (x *exchange) openEvents(cancel context.CancelFunc, u *route.Upstream, resp *http.Response, t0 time.Time) *upstreamEvents {
	bp := streamBufPool.Get().(*[]byte)
	ev := &upstreamEvents{x: x, u: u, resp: resp, t0: t0, bp: bp, buf: *bp,
		idle: x.st.cfg.StreamIdleTimeout.D(), rc: http.NewResponseController(x.w)}
	ev.timer = time.AfterFunc(ev.idle, func() { ev.idleFired.Store(true); cancel() })
	ev.timer.Stop()
	x.upstreamWait += time.Since(t0) // waiting for the headers
	return ev
}

// close returns the buffer (unless an event outgrew it) and records the
// time the upstream took.
func (ev *upstreamEvents) close() {
	ev.timer.Stop()
	if cap(ev.buf) == streamBufSize {
		*ev.bp = ev.buf
		streamBufPool.Put(ev.bp)
	}
	ev.x.s.metrics.UpstreamDuration(ev.u.Name, time.Since(ev.t0).Seconds())
}

// read appends what the upstream sends next, growing the buffer for an
// event larger than it up to maxEventBytes. tooLarge is set (and nothing
// read) past that bound.
func (ev *upstreamEvents) read() (err, tooLarge error) {
	if ev.filled == len(ev.buf) {
		if len(ev.buf) >= maxEventBytes {
			return nil, fmt.Errorf("stream event larger than %d bytes", maxEventBytes)
		}
		ev.buf = append(ev.buf[:ev.filled], make([]byte, len(ev.buf))...)
	}
	ev.timer.Reset(ev.idle)
	tr := time.Now()
	n, err := ev.resp.Body.Read(ev.buf[ev.filled:])
	ev.timer.Stop()
	ev.x.upstreamWait += time.Since(tr)
	ev.filled += n
	return err, nil
}

// passed drops the first end bytes, which went to the client.
func (ev *upstreamEvents) passed(end int) { ev.filled = copy(ev.buf, ev.buf[end:ev.filled]) }

// write sends events to the client with write (the format's writer), under
// the idle deadline, and flushes them.
func (ev *upstreamEvents) write(events []byte, write func([]byte) error) error {
	setWriteDeadline(ev.x.w, time.Now().Add(ev.idle))
	err := write(events)
	if err == nil {
		err = ev.rc.Flush()
	}
	return err
}

// broken is the attempt's end for a read error err that is not the
// stream's end: the client gone, the upstream idle or past its timeout, or
// a fault of the connection.
func (ev *upstreamEvents) broken(ctx, actx context.Context, err error, committed bool) route.Attempt {
	switch {
	case ctx.Err() != nil:
		ev.x.clientGone = true
		return route.Attempt{Err: err, Committed: committed}
	case ev.idleFired.Load():
		return route.Attempt{Err: fmt.Errorf("stream sent nothing for %s (stream_idle_timeout)", ev.idle),
			Retryable: true, Timeout: true, Committed: committed}
	case errors.Is(actx.Err(), context.DeadlineExceeded):
		return route.Attempt{Err: fmt.Errorf("stream not complete within timeout %s", ev.u.Timeout),
			Retryable: true, Timeout: true, Committed: committed}
	}
	when := beforeFirstEvent
	if committed {
		when = midAnswer
	}
	return route.Attempt{Err: ev.x.fault(ev.u, err, when), Retryable: true, Committed: committed}
}
