package gateway

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
)

// body is a request body read into a pooled buffer. It is shared by every
// attempt of a request, and http.Transport may still be reading an
// attempt's body after RoundTrip returns, so the buffer goes back to the
// pool only when the handler and every reader have let go of it.
type body struct {
	buf  []byte
	refs atomic.Int32
}

var bodyPool = sync.Pool{New: func() any { return &body{buf: make([]byte, 0, 16<<10)} }}

// maxPooledBody keeps rare huge bodies from pinning memory in the pool.
const maxPooledBody = 1 << 20

var errTooLarge = errors.New("request body too large")

// readBody reads r's body up to limit bytes. A body announced larger than
// the limit is refused before a byte of it is read.
func readBody(r *http.Request, limit int64) (*body, error) {
	if r.ContentLength > limit {
		return nil, errTooLarge
	}
	b := bodyPool.Get().(*body)
	b.refs.Store(1)
	buf := b.buf[:0]
	if r.ContentLength > 0 && int64(cap(buf)) < r.ContentLength {
		buf = make([]byte, 0, r.ContentLength)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			b.buf = buf
			b.release()
			return nil, errTooLarge
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			b.buf = buf
			b.release()
			return nil, err
		}
	}
	b.buf = buf
	return b, nil
}

func (b *body) release() {
	if b.refs.Add(-1) != 0 {
		return
	}
	if cap(b.buf) > maxPooledBody {
		return
	}
	b.buf = b.buf[:0]
	bodyPool.Put(b)
}

// reader returns a ReadCloser over data (the body or a rewrite of it) that
// holds a reference on b until closed.
func (b *body) reader(data []byte) io.ReadCloser {
	b.refs.Add(1)
	return &bodyReader{b: b, data: data}
}

type bodyReader struct {
	b      *body
	data   []byte
	off    int
	closed atomic.Bool
}

func (r *bodyReader) Read(p []byte) (int, error) {
	if r.off >= len(r.data) {
		return 0, io.EOF
	}
	n := copy(p, r.data[r.off:])
	r.off += n
	return n, nil
}

func (r *bodyReader) Close() error {
	if r.closed.CompareAndSwap(false, true) {
		r.b.release()
	}
	return nil
}

// edit replaces data[start:end] with repl.
type edit struct {
	start, end int
	repl       string
}

// applyEdits returns src with edits (sorted by start, not overlapping)
// applied, appended to dst.
func applyEdits(dst, src []byte, edits []edit) []byte {
	last := 0
	for _, e := range edits {
		dst = append(dst, src[last:e.start]...)
		dst = append(dst, e.repl...)
		last = e.end
	}
	return append(dst, src[last:]...)
}
