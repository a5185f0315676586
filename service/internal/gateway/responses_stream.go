package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/relaygate/relaygate/service/internal/route"
)

// A Responses stream opens with lifecycle events (response.created,
// response.in_progress, the message's output_item.added and
// content_part.added) before any content. An upstream that fails after
// response.created has still given the client nothing to use, so those
// events are held: the stream commits to the client at its first event
// carrying content (a text or arguments delta, a tool call's item, …),
// which goes out together with the held events in one write. Before it, a
// response.failed or error event, a cut or a stall fails the attempt like a
// failed connection, and the chain retries or falls back, the client none
// the wiser. After it, a break ends the client's stream with the format's
// own response.failed event and a cut.

// Event types that carry no content: held until the commit point.
var heldEventTypes = map[string]bool{
	"response.created":                      true,
	"response.in_progress":                  true,
	"response.queued":                       true,
	"response.content_part.added":           true,
	"response.reasoning_summary_part.added": true,
}

// heldVerdict is what the events before the commit point come to.
type heldVerdict int

const (
	holdEvents heldVerdict = iota
	commitEvents
	failEvents
)

// scanHeld classifies whole events b, which follow events already held. It
// notes the id of response.created in *created, and for a failure returns
// the upstream's message. Events are read in place (gjson on a string view
// of the buffer, which copies nothing); what outlives the buffer is cloned.
func (x *exchange) scanHeld(b []byte, created *string) (heldVerdict, string) {
	for i := 0; i < len(b); {
		end := nextEvent(b, i)
		data := bytesToString(eventData(b[i:end]))
		i = end
		if len(data) == 0 {
			continue // a comment or keep-alive
		}
		typ := gjson.Get(data, "type").Str
		switch {
		case typ == "response.created":
			*created = strings.Clone(gjson.Get(data, "response.id").Str)
		case heldEventTypes[typ]:
		case typ == "response.output_item.added":
			// An item whose content is yet to come is held; a tool
			// call's item is content itself.
			if t := gjson.Get(data, "item.type").Str; t != "message" && t != "reasoning" {
				return commitEvents, ""
			}
		case typ == "response.failed":
			return failEvents, strings.Clone(scrubErrorText(gjson.Get(data, "response.error.message").Str, x.keyStr, errorTextLimit, false))
		case typ == "error":
			msg := gjson.Get(data, "message").Str
			if msg == "" {
				msg = gjson.Get(data, "error.message").Str
			}
			return failEvents, strings.Clone(scrubErrorText(msg, x.keyStr, errorTextLimit, false))
		default:
			return commitEvents, ""
		}
	}
	return holdEvents, ""
}

// relayResponsesStream relays a Responses stream as bytes, holding its
// lifecycle events until the commit point (see above).
func (x *exchange) relayResponsesStream(ctx, actx context.Context, cancel context.CancelFunc, u *route.Upstream,
	resp *http.Response, t0 time.Time) route.Attempt {
	ev := x.openEvents(cancel, u, resp, t0)
	defer ev.close()
	write := func(b []byte) error { _, err := x.w.Write(b); return err }
	held, committed := 0, false
	created := ""
	x.respID = "" // an earlier attempt's id never reached the client
	// recorded is closed once the response id's owner is written (see
	// exchange.recorder); nil until response.created has been seen.
	var recorded chan struct{}
	defer func() {
		if recorded != nil {
			<-recorded
		}
	}()
	for {
		err, tooLarge := ev.read()
		if tooLarge != nil {
			return route.Attempt{Err: tooLarge, Committed: committed}
		}
		end := completeEvents(ev.buf[:ev.filled])
		if !committed && end > held {
			verdict, msg := x.scanHeld(ev.buf[held:end], &created)
			switch verdict {
			case holdEvents:
				held = end
				if created != "" && recorded == nil {
					recorded = make(chan struct{})
					put := x.recorder(u, created)
					go func() {
						defer close(recorded)
						if put != nil {
							put()
						}
					}()
				}
			case failEvents:
				if msg == "" {
					msg = "no message"
				}
				return route.Attempt{Err: fmt.Errorf("stream failed before its first content: %s", msg), Retryable: true}
			case commitEvents:
				// The id the client is about to see is this upstream's:
				// it is written before the client can see it.
				if recorded != nil {
					<-recorded
				} else {
					x.record(u, created)
				}
				x.commitStream(u, resp)
				committed = true
			}
		}
		if committed && end > 0 {
			events := redactAnswer(ev.buf[:end], x.key)
			x.responsesEvents(events)
			werr := ev.write(events, write)
			ev.passed(end)
			if werr != nil {
				if x.sawDone {
					return route.Attempt{}
				}
				x.clientGone = true
				return route.Attempt{Err: fmt.Errorf("writing to client: %w", werr), Committed: true}
			}
		}
		switch {
		case err == nil:
			continue
		case x.sawDone:
			// The terminal event reached the client: the answer is whole,
			// whatever came after it.
			return route.Attempt{}
		case err == io.EOF && !committed:
			return route.Attempt{Err: errors.New("stream ended before its first content"), Retryable: true}
		case err == io.EOF:
			return route.Attempt{Err: errors.New("stream ended without response.completed"), Retryable: true, Committed: true}
		}
		return ev.broken(ctx, actx, err, committed)
	}
}

// responsesEvents reads what the gateway needs of whole events on their way
// to the client: the last sequence number (for a response.failed of its
// own, should the stream break), and usage and the end from the terminal
// event. Each event's type is read in place; OpenAI writes it first, so
// that costs a few comparisons per event.
func (x *exchange) responsesEvents(b []byte) {
	for i := 0; i < len(b); {
		end := nextEvent(b, i)
		data := bytesToString(eventData(b[i:end]))
		i = end
		if len(data) == 0 {
			continue
		}
		switch gjson.Get(data, "type").Str {
		case "response.completed", "response.incomplete", "response.failed":
			x.sawDone = true
			if u := gjson.Get(data, "response.usage"); u.IsObject() {
				x.responsesUsage(u)
			}
		case "error":
			x.sawDone = true
		}
		if i == len(b) {
			if seq := gjson.Get(data, "sequence_number"); seq.Type == gjson.Number {
				x.lastSeq = seq.Int()
			}
		}
	}
}
