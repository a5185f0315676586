package cache

import (
	"strings"
	"testing"
)

// BenchmarkKey is the cache key of a cacheable chat request: it is computed
// on the request path of every temperature-0 request before Redis is asked.
func BenchmarkKey(b *testing.B) {
	bodies := []struct{ name, body string }{
		{"chat", `{"model":"m","messages":[{"role":"system","content":"You are a concise assistant for an operations team."},` +
			`{"role":"user","content":"Summarise in two sentences why a gateway in front of model APIs helps with cost, latency and outages."}],` +
			`"temperature":0,"max_tokens":256,"user":"u-123"}`},
		{"chat-escapes", `{"model":"m","messages":[{"role":"user","content":"line one\nline two \"quoted\" \u00e9\ud83d\ude00"}],"temperature":0}`},
		{"chat-64KiB", `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("lorem ipsum dolor ", 3641) + `"}],"temperature":0}`},
	}
	for _, tc := range bodies {
		b.Run(tc.name, func(b *testing.B) {
			body := []byte(tc.body)
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, ok, err := Key("global", "/chat/completions", body, false); !ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
	}
}
