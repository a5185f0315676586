package gateway

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/metrics"
)

// The hot path of one proxied request, piece by piece, and whole. Run with
//
//	go test -run '^$' -bench . -benchmem ./service/internal/gateway/
//	go test -run '^$' -bench ServeHTTPLoopback -cpuprofile cpu.out ./service/internal/gateway/
//
// `make bench` (bench/) measures the built binary under load; these show
// which step an optimisation moved, and what it allocates.

// benchChat is a chat request as SDKs send it: a system prompt, a
// question, a few sampling parameters.
const benchChat = `{"model":"m","messages":[{"role":"system","content":"You are a concise assistant for an operations team."},` +
	`{"role":"user","content":"Summarise in two sentences why a gateway in front of model APIs helps with cost, latency and outages."}],` +
	`"temperature":0.7,"max_tokens":256,"user":"u-123"}`

// benchCompletion is the upstream's whole answer.
const benchCompletion = `{"id":"chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012","object":"chat.completion","created":1764115200,"model":"m",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"A gateway routes each request to the cheapest healthy upstream and caches repeats. ` +
	`It falls back when a provider fails, so outages and price differences stop reaching users.","refusal":null},"logprobs":null,"finish_reason":"stop"}],` +
	`"usage":{"prompt_tokens":41,"completion_tokens":38,"total_tokens":79,"prompt_tokens_details":{"cached_tokens":0},` +
	`"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_bench"}`

func benchEvent(content string) string {
	return `data: {"id":"chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012","object":"chat.completion.chunk","created":1764115200,"model":"m",` +
		`"system_fingerprint":"fp_bench","choices":[{"index":0,"delta":{"content":"` + content + `"},"logprobs":null,"finish_reason":null}],"usage":null}` + "\n\n"
}

const benchUsageEvent = `data: {"id":"chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012","object":"chat.completion.chunk","created":1764115200,"model":"m",` +
	`"system_fingerprint":"fp_bench","choices":[],"usage":{"prompt_tokens":41,"completion_tokens":16,"total_tokens":57}}` + "\n\n"

func BenchmarkParseRequest(b *testing.B) {
	tests := []struct {
		name, body string
		ep         endpoint
	}{
		{"chat", benchChat, epChat},
		{"chat-stream", strings.Replace(benchChat, `"max_tokens":256`, `"max_tokens":256,"stream":true,"stream_options":{"include_usage":true}`, 1), epChat},
		{"embeddings", `{"model":"e","input":["one","two","three"]}`, epEmbeddings},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			body := []byte(tc.body)
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, e := parseRequest(body, tc.ep); e != nil {
					b.Fatal(e.Message)
				}
			}
		})
	}
}

func BenchmarkUpstreamBody(b *testing.B) {
	tests := []struct {
		name   string
		body   string
		model  string // the upstream's spelling; "" keeps the client's
		stream bool
	}{
		{"unchanged", benchChat, "", false},
		{"renamed", benchChat, "gpt-4.1-2025-04-14", false},
		{"stream-add-usage", strings.Replace(benchChat, `"max_tokens":256`, `"max_tokens":256,"stream":true`, 1), "", true},
		{"forced-stream-renamed", benchChat, "gpt-4.1-2025-04-14", true},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			body := []byte(tc.body)
			req, e := parseRequest(body, epChat)
			if e != nil {
				b.Fatal(e.Message)
			}
			b.ReportAllocs()
			for b.Loop() {
				out, _ := upstreamBody(body, &req, tc.model, tc.stream)
				if len(out) == 0 {
					b.Fatal("empty body")
				}
			}
		})
	}
}

func BenchmarkReadUsage(b *testing.B) {
	data := []byte(benchCompletion)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		var x exchange
		x.readUsage(data)
		if !x.usageKnown {
			b.Fatal("usage not read")
		}
	}
}

func BenchmarkWriteEvents(b *testing.B) {
	// With include_usage, which the gateway always asks for on streams,
	// OpenAI-shaped upstreams put "usage":null in every chunk.
	content := []byte(benchEvent("Hello"))
	plain := bytes.Replace(content, []byte(`,"usage":null`), nil, 1)
	tests := []struct {
		name       string
		events     []byte
		usageAdded bool
	}{
		{"content", content, false},
		{"content-without-usage-field", plain, false},
		{"usage-kept", []byte(benchUsageEvent), false},
		{"usage-dropped", []byte(benchUsageEvent), true},
		{"batch-of-8", bytes.Repeat(content, 8), false},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			x := exchange{w: discardWriter{}}
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.events)))
			for b.Loop() {
				if end := completeEvents(tc.events); end != len(tc.events) {
					b.Fatalf("completeEvents = %d, want %d", end, len(tc.events))
				}
				if err := x.writeEvents(tc.events, tc.usageAdded); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkServeHTTPLoopback is one whole request through the gateway's
// handler like BenchmarkHandler, but with a real upstream over loopback:
// the transport's connection pool, its read and write goroutines and the
// syscalls are in the loop, as in production. The client side is an
// in-memory recorder, so the loop measures the gateway and the upstream
// only.
func BenchmarkServeHTTPLoopback(b *testing.B) {
	streamAnswer := benchEvent("") + strings.Repeat(benchEvent("tok "), 16) + benchUsageEvent + "data: [DONE]\n\n"
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if bytes.Contains([]byte(r.Header.Get("Accept")), []byte("event-stream")) {
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, streamAnswer)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, benchCompletion)
	}))
	b.Cleanup(upstream.Close)
	gw := benchGateway(b, upstream.URL)

	tests := []struct {
		name, path, body string
		wantStream       bool
	}{
		{"chat", "/v1/chat/completions", benchChat, false},
		{"chat-stream", "/v1/chat/completions/stream", benchChat, true},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader(tc.body))
				req.Header.Set("Authorization", "Bearer "+testClientKey)
				req.Header.Set("Content-Type", "application/json")
				rec := httptest.NewRecorder()
				gw.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
				if tc.wantStream && !bytes.HasSuffix(rec.Body.Bytes(), []byte("data: [DONE]\n\n")) {
					b.Fatalf("stream not relayed whole: %q", rec.Body)
				}
			}
		})
	}
}

func benchGateway(b *testing.B, upstreamURL string) *Server {
	b.Helper()
	y := fmt.Sprintf(`listen: "127.0.0.1:0"
client_keys: [%q]
upstreams:
  - {name: up, base_url: %q, api_key: "upstream-key-0123456789", timeout: 30s, connect_timeout: 5s}
models:
  - name: m
    route: [up]
    price: {input_per_mtok: 1.40, output_per_mtok: 5.60}
    reference_price: {input_per_mtok: 2.00, output_per_mtok: 8.00}
log: {level: info, requests: true}
`, testClientKey, upstreamURL+"/v1")
	cfg, err := config.Parse([]byte(y), func(string) (string, bool) { return "", false })
	if err != nil {
		b.Fatalf("config: %v", err)
	}
	return New(cfg, Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)), Metrics: metrics.New()})
}

// discardWriter is a ResponseWriter that keeps nothing, so writeEvents is
// measured without a growing buffer.
type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}
