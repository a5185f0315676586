package gateway

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Whole answers are read into memory before they are sent (see
// relayWhole), so without a bound for the whole process a few large answers
// at once take the host's memory: each answer has a limit of its own, and
// all of them together share a byte budget (buffer_budget_bytes).
const (
	// maxChatAnswerBytes bounds one whole chat answer.
	maxChatAnswerBytes = 64 << 20
	// maxEmbeddingsAnswerBytes bounds one embeddings answer. The largest
	// request OpenAI accepts, 2048 inputs to a 3072-dimension model, is
	// answered with 6.3 million floats: about 20 bytes each as OpenAI
	// writes them (125 MB), up to 30 from servers that print every digit
	// of a float64 (190 MB).
	maxEmbeddingsAnswerBytes = 192 << 20
	// budgetWait is the longest an answer waits for budget that other
	// answers hold, within its attempt's timeout; then the client gets a
	// 503 with Retry-After.
	budgetWait = 10 * time.Second
	// trimAfter is how long after a large answer's memory is given back
	// the gateway returns free memory to the OS, and so at most how often.
	trimAfter = time.Second
	// trimFrom is the smallest answer whose end starts a trim.
	trimFrom = 8 << 20
)

// byteBudget is a counting semaphore over bytes, first come first served,
// so a large answer waiting for room is not overtaken for ever by small
// ones.
type byteBudget struct {
	size  int64
	gauge func(delta float64) // relaygate_response_buffer_bytes
	// trimPending: a trim is scheduled; collecting: a collection runs.
	// At most one of each at a time.
	trimPending, collecting atomic.Bool

	mu      sync.Mutex
	used    int64
	waiters list.List // of *budgetWaiter, in arrival order
}

type budgetWaiter struct {
	n     int64
	ready chan struct{} // closed once n is reserved for the waiter
}

func newByteBudget(size int64, gauge func(float64)) *byteBudget {
	if gauge == nil {
		gauge = func(float64) {}
	}
	return &byteBudget{size: size, gauge: gauge}
}

// errBufferBusy: the budget stayed taken by other answers for as long as
// this one could wait.
type errBufferBusy struct{}

func (errBufferBusy) Error() string {
	return "the gateway has no memory free to hold the answer now (buffer_budget_bytes is taken by other answers)"
}

// errAnswerTooLarge: an answer is over its endpoint's limit.
type errAnswerTooLarge struct{ limit int }

func (e *errAnswerTooLarge) Error() string {
	return fmt.Sprintf("answer larger than the gateway's limit of %d bytes", e.limit)
}

// tryAcquire reserves n bytes if they are free now and nobody waits, or,
// first, whoever waits.
func (b *byteBudget) tryAcquire(n int64, first bool) bool {
	b.mu.Lock()
	ok := b.used+n <= b.size && (first || b.waiters.Len() == 0)
	if ok {
		b.used += n
	}
	b.mu.Unlock()
	if ok {
		b.gauge(float64(n))
	}
	return ok
}

// acquire reserves n bytes, waiting while other answers hold the budget.
// It fails with ctx's error when ctx ends first; n over the whole budget
// can never fit, and fails at once. first puts the caller ahead of those
// waiting: an answer growing as it arrives already holds budget, and
// queued behind one that waits for that budget, both would wait in vain.
func (b *byteBudget) acquire(ctx context.Context, n int64, first bool) error {
	b.mu.Lock()
	if b.used+n <= b.size && (first || b.waiters.Len() == 0) {
		b.used += n
		b.mu.Unlock()
		b.gauge(float64(n))
		return nil
	}
	if n > b.size {
		b.mu.Unlock()
		return errBufferBusy{}
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	var e *list.Element
	if first {
		e = b.waiters.PushFront(w)
	} else {
		e = b.waiters.PushBack(w)
	}
	b.mu.Unlock()
	select {
	case <-w.ready:
		b.gauge(float64(n))
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	select {
	case <-w.ready:
		// Reserved just as ctx ended: given back, since the caller fails.
		b.used -= n
	default:
		b.waiters.Remove(e)
	}
	// Whoever waited behind this one may fit now.
	b.wakeLocked()
	b.mu.Unlock()
	return ctx.Err()
}

// release gives back n bytes that acquire reserved.
func (b *byteBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.wakeLocked()
	b.mu.Unlock()
	b.gauge(-float64(n))
	if n >= trimFrom {
		b.collectNow()
		b.trimSoon()
	}
}

// collectNow starts a collection in the background, unless one is running,
// so that the memory of a large answer just sent is free for the next one.
// Otherwise the collector, which lets the heap grow to twice what was live
// at its last cycle, would let large answers pile up as garbage to about
// twice the budget.
func (b *byteBudget) collectNow() {
	if !b.collecting.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer b.collecting.Store(false)
		runtime.GC()
	}()
}

func (b *byteBudget) wakeLocked() {
	for e := b.waiters.Front(); e != nil; e = b.waiters.Front() {
		w := e.Value.(*budgetWaiter)
		if b.used+w.n > b.size {
			return
		}
		b.used += w.n
		b.waiters.Remove(e)
		close(w.ready)
	}
}

// trimSoon returns free memory to the OS a little after a large answer is
// done, unless the budget is busy again by then (collectNow has freed it
// for the next answers, and the next answers will use it). Go's scavenger would give
// it back only slowly: after a spike of large answers the process would
// stay at its peak size for minutes.
func (b *byteBudget) trimSoon() {
	if !b.trimPending.CompareAndSwap(false, true) {
		return
	}
	time.AfterFunc(trimAfter, func() {
		defer b.trimPending.Store(false)
		b.mu.Lock()
		busy := b.used > b.size/2
		b.mu.Unlock()
		if !busy {
			debug.FreeOSMemory()
		}
	})
}

// answerBuffer is the memory one whole answer is read into, reserved
// against the budget for as long as the answer is held.
type answerBuffer struct {
	budget   *byteBudget
	bp       *[]byte // from respBufPool when pooled
	pooled   bool
	reserved int64
}

// reserve takes n more bytes of budget, waiting at most budgetWait within
// actx. Waiting in vain is errBufferBusy; the client leaving (ctx) is ctx's
// error. A buffer that already holds budget (growing) goes first.
func (a *answerBuffer) reserve(ctx, actx context.Context, n int64) error {
	first := a.reserved > 0
	if a.budget.tryAcquire(n, first) { // the common case: no timer, no allocation
		a.reserved += n
		return nil
	}
	wctx, cancel := context.WithTimeout(actx, budgetWait)
	defer cancel()
	if err := a.budget.acquire(wctx, n, first); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errBufferBusy{}
	}
	a.reserved += n
	return nil
}

// init sizes the buffer from the answer's announced length (-1: none),
// reserving it in b. An announced length is reserved and allocated whole
// at once, so the answer is read without a copy; without one, the buffer
// starts small and grows, reserving as it does. On success the caller
// must release it.
func (a *answerBuffer) init(ctx, actx context.Context, b *byteBudget, announced int64) error {
	*a = answerBuffer{budget: b}
	if announced >= 0 && announced+1 > maxPooledResponse {
		if err := a.reserve(ctx, actx, announced+1); err != nil {
			return err
		}
		buf := make([]byte, 0, announced+1) // +1: reading to EOF needs no growth
		a.bp = &buf
		return nil
	}
	a.bp, a.pooled = respBufPool.Get().(*[]byte), true
	*a.bp = (*a.bp)[:0]
	need := int64(cap(*a.bp))
	if announced >= 0 {
		need = max(need, announced+1)
	}
	if err := a.reserve(ctx, actx, need); err != nil {
		respBufPool.Put(a.bp)
		return err
	}
	if int64(cap(*a.bp)) < need {
		*a.bp = make([]byte, 0, need)
	}
	return nil
}

// readFrom reads r to its end into the buffer, failing with errTooLarge
// past limit bytes and with errBufferBusy when growing finds no budget.
func (a *answerBuffer) readFrom(ctx, actx context.Context, r io.Reader, limit int) ([]byte, error) {
	buf := *a.bp
	for {
		if len(buf) == cap(buf) {
			grown := min(max(2*cap(buf), 32<<10), limit+1)
			if grown <= cap(buf) {
				return buf, errTooLarge
			}
			if err := a.reserve(ctx, actx, int64(grown-cap(buf))); err != nil {
				return buf, err
			}
			nb := make([]byte, len(buf), grown)
			copy(nb, buf)
			buf = nb
			*a.bp = buf
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		*a.bp = buf
		if len(buf) > limit {
			return buf, errTooLarge
		}
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// release gives the buffer's memory back: a small one to the pool, a large
// one to the collector. The answer's bytes must no longer be in use.
func (a *answerBuffer) release() {
	if a.pooled && cap(*a.bp) <= maxPooledResponse {
		*a.bp = (*a.bp)[:0]
		respBufPool.Put(a.bp)
	}
	a.budget.release(a.reserved)
	a.reserved = 0
}
