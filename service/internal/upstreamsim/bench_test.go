package upstreamsim

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// These benchmarks measure the handler alone, without the network, to keep
// the simulator's own cost per request visible: it is the upstream in the
// gateway-versus-nginx benchmarks and must not be their bottleneck.
func BenchmarkServeHTTP(b *testing.B) {
	const messages = `"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Tell me about relays and gateways in two sentences."}]`
	tests := []struct {
		name, path, body string
	}{
		{"chat", "/v1/chat/completions", `{"model":"gpt-4.1",` + messages + `}`},
		{"stream", "/v1/chat/completions", `{"model":"gpt-4.1","stream":true,"stream_options":{"include_usage":true},` + messages + `}`},
		{"embeddings", "/v1/embeddings", `{"model":"e","input":["one","two","three"]}`},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			sim := New(Config{APIKey: "k"})
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader(tc.body))
				req.Header.Set("Authorization", "Bearer k")
				rec := httptest.NewRecorder()
				sim.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
		})
	}
}
