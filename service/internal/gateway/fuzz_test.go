package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/metrics"
)

// Fuzz targets for everything the gateway parses from clients and
// upstreams. Seeds live in testdata/fuzz/<FuzzName>/; scripts/fuzz.sh runs
// each target for a while (`make test` briefly, `make bench` longer).

// fzServer is a gateway with one upstream, for targets that need an
// exchange; it is never served over the network.
func fzServer(f *testing.F) *Server {
	f.Helper()
	cfg, err := config.Parse([]byte(`
client_keys: ["sk-fuzz-client-key-0123456789"]
upstreams: [{name: a, base_url: "http://127.0.0.1:1/v1", api_key: "sk-fuzz-upstream"}]
models: [{name: m, route: [a], price: {input_per_mtok: 1, output_per_mtok: 2}, reference_price: {input_per_mtok: 3, output_per_mtok: 6}}]
stream_idle_timeout: 1h
log: {level: error}
`), func(string) (string, bool) { return "", false })
	if err != nil {
		f.Fatal(err)
	}
	return New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: metrics.New()})
}

func fzExchange(s *Server, w http.ResponseWriter) *exchange {
	st := s.state.Load()
	return &exchange{s: s, st: st, w: w, r: httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil),
		ep: epChat, rid: "fuzz", start: time.Now(), model: "m", upstream: "none", status: 0, stream: true,
		price: st.models["m"].chain[0].Price, reference: st.models["m"].reference}
}

// topLevel decodes a JSON object's members as most upstreams read them:
// encoding/json, Python's json and the like keep the last of duplicate keys.
func topLevel(t *testing.T, b []byte) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not a JSON object (%v): %q", err, b)
	}
	return m
}

// FuzzParseRequest: parseRequest accepts or refuses any body without
// panicking, and for an accepted one upstreamBody's rewrite (model renamed,
// stream forced, usage asked for) is valid JSON whose members are the
// client's, with only those three changed as asked.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`), "", false, false)
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"Model":"x","stream":true,"stream":false}`), "r", false, true)
	f.Fuzz(func(t *testing.T, body []byte, rename string, embeddings, stream bool) {
		if !utf8.ValidString(rename) {
			return // renames come from the YAML config, which is UTF-8
		}
		ep := epChat
		if embeddings {
			ep = epEmbeddings
		}
		req, e := parseRequest(body, ep)
		if e != nil {
			if e.Status != http.StatusBadRequest || e.Code == "" || e.Message == "" || e.Type == "" {
				t.Fatalf("error not a 400 in OpenAI's shape: %+v", e)
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("invalid JSON accepted: %q", body)
		}
		checkNoAmbiguousKeys(t, body)
		in := topLevel(t, body)
		var model string
		if err := json.Unmarshal(body[req.modelStart:req.modelEnd], &model); err != nil || model != req.model || req.model == "" {
			t.Fatalf("model %q at [%d:%d] = %q (%v)", req.model, req.modelStart, req.modelEnd, body[req.modelStart:req.modelEnd], err)
		}
		if !bytes.Equal(in["model"], body[req.modelStart:req.modelEnd]) {
			t.Fatalf("the gateway routes on model %s, an upstream reads %s", body[req.modelStart:req.modelEnd], in["model"])
		}
		if ep == epEmbeddings {
			stream = false
		}
		out, usageAdded := upstreamBody(body, &req, rename, stream)
		if !json.Valid(out) {
			t.Fatalf("upstream body is not valid JSON:\nin:  %q\nout: %q", body, out)
		}
		got := topLevel(t, out)
		changed := map[string]bool{"model": rename != "" && rename != req.model, "stream": stream, "stream_options": stream}
		for k, v := range in {
			if !changed[k] && !bytes.Equal(got[k], v) {
				t.Fatalf("member %q changed: %s → %s", k, v, got[k])
			}
		}
		for k := range got {
			if _, ok := in[k]; !ok && !changed[k] {
				t.Fatalf("member %q added", k)
			}
		}
		if changed["model"] {
			var m string
			if err := json.Unmarshal(got["model"], &m); err != nil || m != rename {
				t.Fatalf("model renamed to %s, want %q (%v)", got["model"], rename, err)
			}
		}
		if stream {
			var s bool
			if err := json.Unmarshal(got["stream"], &s); err != nil || !s {
				t.Fatalf("stream forced to %s", got["stream"])
			}
			var opts map[string]json.RawMessage
			if err := json.Unmarshal(got["stream_options"], &opts); err != nil || string(opts["include_usage"]) != "true" {
				t.Fatalf("stream_options %s: the upstream will not send usage (%v)", got["stream_options"], err)
			}
			var before map[string]json.RawMessage
			if json.Unmarshal(in["stream_options"], &before) == nil {
				for k, v := range before {
					if k != "include_usage" && !bytes.Equal(opts[k], v) {
						t.Fatalf("stream option %q changed: %s → %s", k, v, opts[k])
					}
				}
				if usageAdded == (string(before["include_usage"]) == "true") {
					t.Fatalf("usageAdded %t, but the client's include_usage is %s", usageAdded, before["include_usage"])
				}
			}
		}
	})
}

// sseStream builds an upstream stream as OpenAI sends it: a role chunk,
// content chunks, a finish chunk, a usage chunk with empty choices, [DONE].
func sseStream(content string, prompt, completion int, crlf bool) (stream, usageEvent []byte) {
	sep := "\n\n"
	if crlf {
		sep = "\r\n\r\n"
	}
	var b bytes.Buffer
	ev := func(v any) []byte {
		j, _ := json.Marshal(v)
		return []byte("data: " + string(j) + sep)
	}
	chunk := func(delta map[string]any, finish any) map[string]any {
		return map[string]any{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}}
	}
	b.Write(ev(chunk(map[string]any{"role": "assistant", "content": ""}, nil)))
	for len(content) > 0 {
		n := min(len(content), 7)
		b.Write(ev(chunk(map[string]any{"content": content[:n]}, nil)))
		content = content[n:]
	}
	b.Write(ev(chunk(map[string]any{}, "stop")))
	usageEvent = ev(map[string]any{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []any{},
		"usage": map[string]any{"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}})
	b.Write(usageEvent)
	b.WriteString("data: [DONE]" + sep)
	return b.Bytes(), usageEvent
}

// pieces reads data in the sizes cuts gives, one byte of cuts per read.
type pieces struct {
	data, cuts []byte
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(p.data) == 0 {
		return 0, io.EOF
	}
	n := len(p.data)
	if len(p.cuts) > 0 {
		n = min(n, int(p.cuts[0])+1)
		p.cuts = p.cuts[1:]
	}
	n = copy(b, p.data[:n])
	p.data = p.data[n:]
	return n, nil
}

// FuzzStreamRelay: however an upstream's valid stream is cut into reads,
// the client gets exactly its bytes, minus the usage event when the gateway
// asked for usage on the client's behalf, and the usage is counted.
func FuzzStreamRelay(f *testing.F) {
	s := fzServer(f)
	f.Add("Hello, world! A reply long enough for a few chunks.", []byte{0, 5, 200, 3}, false, true, uint16(12), uint16(9))
	f.Fuzz(func(t *testing.T, content string, cuts []byte, crlf, usageAdded bool, prompt, completion uint16) {
		if !utf8.ValidString(content) {
			return // json.Marshal would change it; upstreams send UTF-8
		}
		stream, usage := sseStream(content, int(prompt), int(completion), crlf)
		want := stream
		if usageAdded {
			want = bytes.Replace(stream, usage, nil, 1)
		}
		rec := httptest.NewRecorder()
		x := fzExchange(s, rec)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}},
			Body: io.NopCloser(&pieces{data: stream, cuts: cuts})}
		a := x.relayStream(ctx, ctx, cancel, s.state.Load().upstreams[0], resp, time.Now(), usageAdded)
		if a.Err != nil {
			t.Fatalf("relay failed: %v", a.Err)
		}
		if got := rec.Body.Bytes(); !bytes.Equal(got, want) {
			t.Fatalf("client got\n%q\nwant\n%q", got, want)
		}
		if !x.usageKnown || x.prompt != int(prompt) || x.completion != int(completion) {
			t.Fatalf("usage read as %t %d/%d, want %d/%d", x.usageKnown, x.prompt, x.completion, prompt, completion)
		}
	})
}

// FuzzSSEFraming: the event framing functions on arbitrary bytes never
// panic and agree with a plain reading of the SSE rules: an event ends at a
// blank line ("\n\n" or "\n\r\n"), and writeEvents drops nothing but whole
// usage events with no choices.
func FuzzSSEFraming(f *testing.F) {
	s := fzServer(f)
	f.Add([]byte("data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\n\r\ndata: [DONE]\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Reference: the end of the last event terminator in b.
		wantEnd := 0
		for i := 0; i < len(b); i++ {
			if b[i] != '\n' {
				continue
			}
			if i+1 < len(b) && b[i+1] == '\n' {
				wantEnd = i + 2
			} else if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
				wantEnd = i + 3
			}
		}
		end := completeEvents(b)
		if end != wantEnd {
			t.Fatalf("completeEvents = %d, want %d for %q", end, wantEnd, b)
		}
		_ = hasData(b)

		var events [][]byte
		for i := 0; i < end; {
			next := nextEvent(b[:end], i)
			if next <= i || next > end {
				t.Fatalf("nextEvent(%d) = %d in %q", i, next, b[:end])
			}
			ev := b[i:next]
			// A blank line ends an event; a further line end right after
			// one ("\n\n\n") is an empty event of its own.
			if !bytes.HasSuffix(ev, []byte("\n")) {
				t.Fatalf("event %q does not end with a line end", ev)
			}
			if d := eventData(ev); bytes.ContainsAny(d, "\n") || bytes.HasSuffix(d, []byte("\r")) {
				t.Fatalf("eventData(%q) = %q keeps a line end", ev, d)
			}
			events = append(events, ev)
			i = next
		}

		rec := httptest.NewRecorder()
		x := fzExchange(s, rec)
		if err := x.writeEvents(b[:end], true); err != nil {
			t.Fatal(err)
		}
		// The output is the input with some whole events left out, each a
		// usage event with no choices.
		got := rec.Body.Bytes()
		for _, ev := range events {
			if bytes.HasPrefix(got, ev) {
				got = got[len(ev):]
				continue
			}
			if !bytes.Contains(ev, []byte(`"usage"`)) {
				t.Fatalf("event %q was dropped but carries no usage", ev)
			}
			var payload struct {
				Usage   json.RawMessage `json:"usage"`
				Choices json.RawMessage `json:"choices"`
			}
			if json.Unmarshal(eventData(ev), &payload) == nil &&
				(!bytes.HasPrefix(payload.Usage, []byte("{")) || (payload.Choices != nil && string(payload.Choices) != "[]" && string(payload.Choices) != "null")) {
				t.Fatalf("event %q was dropped but is not a usage event with no choices", ev)
			}
		}
		if len(got) != 0 {
			t.Fatalf("writeEvents wrote bytes that were not in the input: %q", got)
		}
	})
}

// FuzzUsage: whatever usage an upstream reports, in a whole answer or a
// stream event, reading it and recording the request never panics.
func FuzzUsage(f *testing.F) {
	s := fzServer(f)
	f.Add([]byte(`{"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}`), false)
	f.Fuzz(func(t *testing.T, data []byte, asEvent bool) {
		x := fzExchange(s, httptest.NewRecorder())
		if asEvent {
			x.eventUsage(append(append([]byte("data: "), data...), "\n\n"...))
		} else {
			x.readUsage(data)
		}
		if x.usageKnown {
			var probe struct {
				Usage map[string]json.RawMessage `json:"usage"`
			}
			if json.Valid(data) && json.Unmarshal(data, &probe) == nil && probe.Usage == nil {
				t.Fatalf("usage read from an answer without a usage object: %q", data)
			}
		}
		// Recording the request adds the usage to counters, which panic
		// rather than go down.
		x.upstream, x.status = "a", http.StatusOK
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("recording a request with usage %d/%d panicked: %v", x.prompt, x.completion, r)
			}
		}()
		x.finish()
	})
}
