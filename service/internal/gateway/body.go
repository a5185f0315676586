package gateway

import (
	"bytes"
	"errors"
	"io"
	"net/http"
)

var errTooLarge = errors.New("request body too large")

// maxUpfrontBody is the most allocated for a body before its bytes arrive.
const maxUpfrontBody = 64 << 10

// readBody reads r's body up to limit bytes. A body announced larger than
// the limit is refused before a byte of it is read.
//
// The buffer is not pooled, on purpose: http.Transport may go on reading a
// request body after RoundTrip returns, so a pooled buffer would need a
// reference count and a reader type of its own, and the transport writes
// a body it does not recognise as in-memory (a *bytes.Reader behind
// io.NopCloser) with a separate syscall for the headers. One allocation
// of the body's size costs less than that extra write.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, errTooLarge
	}
	// Trust an announced length only up to a modest size: memory for the
	// rest is taken as bytes actually arrive, so announcing a large body
	// and sending nothing pins nothing.
	size := min(r.ContentLength, maxUpfrontBody)
	if size <= 0 {
		size = 4 << 10
	}
	buf := make([]byte, 0, size+1) // +1: reading to EOF needs no second buffer
	for {
		if len(buf) == cap(buf) {
			buf = growBody(buf, r.ContentLength+1, limit+1)
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return nil, errTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// growBody gives a full body buffer room for more: twice its size, or the
// announced size (want) once that is at most four times what has arrived.
// Doubling keeps the bytes allocated for a large body (an audio upload)
// under twice its size, where append's 1.25× steps would allocate five
// times it; and memory still follows the bytes that actually arrived.
func growBody(buf []byte, want, limit int64) []byte {
	next := 2 * int64(cap(buf))
	if want > int64(cap(buf)) && want <= 4*int64(cap(buf)) {
		next = want
	}
	nb := make([]byte, len(buf), min(next, limit))
	copy(nb, buf)
	return nb
}

// bodyReader returns a body the transport knows is in memory, so it sends
// headers and body in one write.
func bodyReader(data []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(data)) }

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
