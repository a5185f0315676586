package gateway

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/metrics"
)

// cannedTransport answers every request at once from memory, so a
// benchmark through it measures the gateway's own work and nothing else.
type cannedTransport struct {
	body   []byte
	header http.Header
}

func (c *cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{StatusCode: 200, Header: c.header, Body: io.NopCloser(bytes.NewReader(c.body)), ContentLength: int64(len(c.body)), Request: r}, nil
}

func benchServer(b *testing.B, logRequests bool, answer []byte, contentType string) *Server {
	b.Helper()
	doc := `
client_keys: ["` + testClientKey + `"]
upstreams:
  - {name: a, base_url: "http://127.0.0.1:1/v1", api_key: "upstream-key", apis: [chat, responses, messages]}
models:
  - {name: m, route: [a], price: {input_per_mtok: 1, output_per_mtok: 2}, reference_price: {input_per_mtok: 3, output_per_mtok: 6}}
log: {requests: ` + map[bool]string{true: "true", false: "false"}[logRequests] + `}
`
	cfg, err := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
	if err != nil {
		b.Fatal(err)
	}
	srv := New(cfg, Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)), Metrics: metrics.New()})
	srv.state.Load().upstreams[0].Transport = &cannedTransport{body: answer, header: http.Header{"Content-Type": {contentType}}}
	return srv
}

// BenchmarkHandler is one whole request through the gateway's handler
// (auth, body read, parse, routing, upstream call through an in-memory
// transport, usage, metrics, log line): the CPU the gateway adds per
// request, which is what relaygate_overhead_seconds measures in service.
func BenchmarkHandler(b *testing.B) {
	stream := "data: " + strings.Repeat(`{"choices":[{"index":0,"delta":{"content":"tok "}}]}`+"\n\ndata: ", 16) +
		`{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":16}}` + "\n\ndata: [DONE]\n\n"
	// The same 16 tokens as a Responses stream: lifecycle events held until
	// the first delta, then the deltas and response.completed.
	respEvent := func(typ, rest string) string {
		return "event: " + typ + "\ndata: {\"type\":\"" + typ + "\",\"sequence_number\":0" + rest + "}\n\n"
	}
	respStream := respEvent("response.created", `,"response":{"id":"resp_1","object":"response","status":"in_progress","output":[],"usage":null}`) +
		respEvent("response.in_progress", `,"response":{"id":"resp_1","object":"response","status":"in_progress","output":[],"usage":null}`) +
		respEvent("response.output_item.added", `,"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}`) +
		respEvent("response.content_part.added", `,"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","text":""}`) +
		strings.Repeat(respEvent("response.output_text.delta", `,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"tok "`), 16) +
		respEvent("response.completed", `,"response":{"id":"resp_1","object":"response","status":"completed","usage":{"input_tokens":7,"output_tokens":16}}`)
	cases := []struct {
		name, path, body, answer, ct string
		log                          bool
	}{
		{"completion", "/v1/chat/completions", chatBody, completionJSON, "application/json", true},
		{"completion-nolog", "/v1/chat/completions", chatBody, completionJSON, "application/json", false},
		{"stream", "/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`, stream, "text/event-stream", true},
		{"responses-stream", "/v1/responses", `{"model":"m","stream":true,"store":false,"input":"hi"}`, respStream, "text/event-stream", true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			srv := benchServer(b, c.log, []byte(c.answer), c.ct)
			body := []byte(c.body)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				req := httptest.NewRequest("POST", c.path, bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+testClientKey)
				rec := httptest.NewRecorder()
				srv.ServeHTTP(rec, req)
				if rec.Code != 200 {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
		})
	}
}
