package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sync"
	"time"

	"github.com/tidwall/gjson"

	"github.com/relaygate/relaygate/service/internal/route"
)

const (
	// streamBufSize is what one read of an upstream stream can bring; an
	// event larger than it grows the buffer. Small, since every open
	// stream holds one: SSE events are a few hundred bytes.
	streamBufSize = 4 << 10
	// maxEventBytes bounds one Server-Sent Event held while it arrives.
	maxEventBytes = 4 << 20
)

var streamBufPool = sync.Pool{New: func() any { b := make([]byte, streamBufSize); return &b }}

func isEventStream(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "text/event-stream"
}

// relayStream passes an upstream's Server-Sent Events to the client as
// they arrive: whatever complete events one read brings are written and
// flushed together, partial events wait for their end. Nothing is sent
// until the first data event is in hand, so an upstream that fails or
// stalls before it can still be retried or fall back; after it, a failure
// ends the client's stream.
func (x *exchange) relayStream(ctx, actx context.Context, cancel context.CancelFunc, u *route.Upstream,
	resp *http.Response, t0 time.Time, usageAdded bool) route.Attempt {
	ev := x.openEvents(cancel, u, resp, t0)
	defer ev.close()
	write := func(b []byte) error { return x.writeEvents(b, usageAdded) }
	committed := false
	for {
		err, tooLarge := ev.read()
		if tooLarge != nil {
			return route.Attempt{Err: tooLarge, Committed: committed}
		}
		end := completeEvents(ev.buf[:ev.filled])
		commit := committed
		if !commit && end > 0 {
			if x.ep != epMessages {
				commit = hasData(ev.buf[:end])
			} else {
				var failed []byte
				if commit, failed = messagesCommit(ev.buf[:end]); failed != nil {
					// Before the commit point: as good as a failed
					// connection, so it is retried or falls back.
					return route.Attempt{Err: fmt.Errorf("stream error event before its first content (%s)", streamErrorText(failed, x.keyStr)),
						Retryable: true}
				}
			}
		}
		if commit && end > 0 {
			if !committed {
				x.commitStream(u, resp)
				committed = true
			}
			// Whole events only: a key cannot straddle them (it holds no
			// blank line), so this finds every copy the upstream sent.
			events := redactAnswer(ev.buf[:end], x.key)
			werr := ev.write(events, write)
			done := x.msgStopped || (x.ep != epMessages && hasDone(events))
			ev.passed(end)
			if werr == nil && done {
				x.sawDone = true
			}
			if werr != nil {
				if x.sawDone {
					return route.Attempt{} // the client had the whole answer
				}
				x.clientGone = true
				return route.Attempt{Err: fmt.Errorf("writing to client: %w", werr), Committed: true}
			}
		}
		if err == nil {
			continue
		}
		if err == io.EOF {
			if !committed {
				return route.Attempt{Err: errors.New("stream ended before its first event"), Retryable: true}
			}
			if ev.filled > 0 { // a last event without its blank line: pass it as it came
				_ = ev.write(redactAnswer(ev.buf[:ev.filled], x.key), write)
			}
			if x.ep == epMessages && !x.msgStopped {
				// A Messages stream is whole only with message_stop:
				// without it the client must not take it for one.
				return route.Attempt{Err: errors.New("stream ended before message_stop"), Retryable: true, Committed: true}
			}
			return route.Attempt{}
		}
		if x.sawDone {
			// Clients (go-openai among them) hang up as soon as they read
			// [DONE]; the answer was whole, whatever came after it.
			return route.Attempt{}
		}
		return ev.broken(ctx, actx, err, committed)
	}
}

func (x *exchange) commitStream(u *route.Upstream, resp *http.Response) {
	h := x.w.Header()
	if ct := resp.Header.Get("Content-Type"); hasKeyPiece(ct, x.keyStr) {
		h["Content-Type"] = hdrEventStream
	} else {
		h.Set("Content-Type", ct)
	}
	h.Set("Cache-Control", "no-cache")
	// Tell buffering proxies in front (nginx) to pass events at once.
	h.Set("X-Accel-Buffering", "no")
	x.setUpstreamHeaders(u, resp)
	x.writeHeader(http.StatusOK)
	x.status, x.upstream, x.committed, x.answered = http.StatusOK, u.Name, true, true
	x.ttft = time.Since(x.start)
	// The upstream has answered well; the route reports success only when
	// the stream ends, minutes later for a long generation. Were this the
	// half-open probe, every other request would skip a healthy upstream
	// until then, so the breaker hears it now (Success is idempotent).
	u.Breaker.Success()
}

// completeEvents returns the length of the prefix of b made of whole
// events (each ends with a blank line, "\n\n" or "\r\n\r\n").
func completeEvents(b []byte) int {
	end := 0
	for i := 0; i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			break
		}
		k := i + j + 1
		switch {
		case k < len(b) && b[k] == '\n':
			end = k + 1
		case k+1 < len(b) && b[k] == '\r' && b[k+1] == '\n':
			end = k + 2
		}
		i = k
	}
	return end
}

func hasData(b []byte) bool {
	return bytes.HasPrefix(b, []byte("data:")) || bytes.Contains(b, []byte("\ndata:"))
}

var (
	usageKey = []byte(`"usage"`)
	doneText = []byte("[DONE]")
)

// hasDone reports whether whole events b include the stream's end, an
// event whose data is exactly [DONE] ("data:[DONE]" is valid SSE too). A
// model writing "data: [DONE]" inside its content is not the end: taking
// it for one would pass a later cut off as a whole answer.
func hasDone(b []byte) bool {
	if !bytes.Contains(b, doneText) {
		return false
	}
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		d, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r"), []byte("data:"))
		if !ok {
			continue
		}
		d, _ = bytes.CutPrefix(d, []byte(" "))
		if bytes.Equal(d, doneText) {
			return true
		}
	}
	return false
}

// writeEvents writes whole events to the client as bytes, reading usage
// from the event that carries it. When the gateway asked for usage on the
// client's behalf, that extra event (usage with empty choices) is dropped
// so clients that index choices[0] of every chunk keep working.
func (x *exchange) writeEvents(b []byte, usageAdded bool) error {
	if x.ep == epMessages {
		return x.writeMessageEvents(b)
	}
	if !hasUsageObject(b) {
		_, err := x.w.Write(b)
		return err
	}
	from := 0
	for i := 0; i < len(b); {
		end := nextEvent(b, i)
		ev := b[i:end]
		if hasUsageObject(ev) && x.eventUsage(ev) && usageAdded && emptyChoices(ev) {
			if _, err := x.w.Write(b[from:i]); err != nil {
				return err
			}
			from = end
		}
		i = end
	}
	_, err := x.w.Write(b[from:])
	return err
}

// hasUsageObject reports whether b may hold a usage object: a "usage" key
// followed by '{'. Upstreams asked for usage put "usage":null in every
// chunk before the last; this keeps those chunks on the fast path.
func hasUsageObject(b []byte) bool {
	for {
		i := bytes.Index(b, usageKey)
		if i < 0 {
			return false
		}
		b = b[i+len(usageKey):]
		j := 0
		for j < len(b) && (b[j] == ' ' || b[j] == ':' || b[j] == '\t') {
			j++
		}
		if j < len(b) && b[j] == '{' {
			return true
		}
	}
}

// nextEvent returns the offset just after the event starting at i.
func nextEvent(b []byte, i int) int {
	for j := i; j < len(b); j++ {
		if b[j] != '\n' {
			continue
		}
		if j+1 < len(b) && b[j+1] == '\n' {
			return j + 2
		}
		if j+2 < len(b) && b[j+1] == '\r' && b[j+2] == '\n' {
			return j + 3
		}
	}
	return len(b)
}

// eventData returns the payload of an event's data lines.
func eventData(ev []byte) []byte {
	i := bytes.Index(ev, []byte("data:"))
	if i < 0 {
		return nil
	}
	d := ev[i+5:]
	if len(d) > 0 && d[0] == ' ' {
		d = d[1:]
	}
	if j := bytes.IndexByte(d, '\n'); j >= 0 {
		d = d[:j]
	}
	return bytes.TrimRight(d, "\r")
}

// eventUsage records the usage an event carries; it reports whether there
// was one.
func (x *exchange) eventUsage(ev []byte) bool {
	u := gjson.GetBytes(eventData(ev), "usage")
	if !u.IsObject() {
		return false
	}
	x.chatUsage(u)
	return true
}

func emptyChoices(ev []byte) bool {
	c := gjson.GetBytes(eventData(ev), "choices")
	return !c.Exists() || (c.IsArray() && len(c.Array()) == 0)
}

// breakStream ends a stream whose upstream failed after its first event:
// an error event in OpenAI's shape for clients that read it, then the
// connection is cut (in finish) so no client mistakes it for a whole answer.
//
// The message names the upstream that was streaming and what broke it: by
// then the chain was not exhausted (nothing after the first event may be
// retried), so "every upstream failed" would send whoever reads it to look
// at the wrong thing.
func (x *exchange) breakStream(err error) {
	if x.ep == epResponses {
		x.breakResponsesStream(err)
		return
	}
	cause := err
	var ex *route.ExhaustedError
	if errors.As(err, &ex) && len(ex.Failures) > 0 {
		cause = ex.Failures[len(ex.Failures)-1].Err
	}
	text := fmt.Sprintf("The stream from upstream %s broke after it started: %v. The answer so far is incomplete; retry the request.", x.upstream, cause)
	if x.ep.errorFormat() == formatAnthropic {
		x.breakAnthropicStream(text)
	} else {
		msg, _ := json.Marshal(map[string]any{"error": map[string]any{
			"message": text,
			"type":    typeUpstream,
			"code":    "stream_interrupted",
		}})
		_, _ = x.w.Write([]byte("data: "))
		_, _ = x.w.Write(msg)
		_, _ = x.w.Write([]byte("\n\n"))
	}
	_ = http.NewResponseController(x.w).Flush()
	x.errMsg = text
	// Counted as 502: the client did not get a whole answer.
	x.status = http.StatusBadGateway
	x.abort = true
}
