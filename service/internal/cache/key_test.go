package cache

import (
	"regexp"
	"testing"
)

const (
	testScope = "test"
	chatPath  = "/v1/chat/completions"
	embedPath = "/v1/embeddings"
	baseBody  = `{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"temperature":0}`
)

func mustKey(t *testing.T, path, body string, force bool) string {
	t.Helper()
	key, ok, err := Key(testScope, path, []byte(body), force)
	if err != nil {
		t.Fatalf("Key(%s, %s): %v", path, body, err)
	}
	if !ok {
		t.Fatalf("Key(%s, %s) not cacheable, want cacheable", path, body)
	}
	return key
}

// req is what Key is asked about: a request's path and body, and whether
// the config forces caching whatever the temperature.
type req struct {
	path, body string
	force      bool
}

func TestKeyEquivalence(t *testing.T) {
	base := req{chatPath, baseBody, false}
	tests := []struct {
		name string
		a, b req
		same bool
	}{
		{"reordered object keys", base,
			req{chatPath, `{"temperature":0,"messages":[{"content":"hi","role":"user"}],"model":"gpt-4.1"}`, false}, true},
		{"whitespace", base,
			req{chatPath, "{\n  \"model\": \"gpt-4.1\",\n  \"messages\": [ {\"role\": \"user\", \"content\": \"hi\"} ],\n\t\"temperature\": 0\n}\n", false}, true},
		{"stream flag and options", base,
			req{chatPath, `{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`, false}, true},
		{"always-streaming endpoint", base, req{chatPath + "/stream", baseBody, false}, true},
		{"trailing slash", base, req{chatPath + "/", baseBody, false}, true},
		{"end-user id and storage fields", base,
			req{chatPath, `{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"temperature":0,"user":"u-42","store":true,"metadata":{"a":"b"},"service_tier":"flex","prompt_cache_key":"k","safety_identifier":"s"}`, false}, true},
		{"zero spelled 0.0", base,
			req{chatPath, `{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"temperature":0.0}`, false}, true},
		{"zero spelled -0e0", base,
			req{chatPath, `{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"temperature":-0e0}`, false}, true},
		{"string escapes", base,
			req{chatPath, `{"model":"gpt-4.1","messages":[{"role":"user","content":"h\u0069"}],"temperature":0}`, false}, true},
		{"integral number spellings",
			req{chatPath, `{"model":"m","messages":[],"temperature":0,"max_tokens":100}`, false},
			req{chatPath, `{"model":"m","messages":[],"temperature":0,"max_tokens":1e2}`, false}, true},
		{"fraction spellings",
			req{chatPath, `{"model":"m","messages":[],"temperature":0,"top_p":0.5}`, false},
			req{chatPath, `{"model":"m","messages":[],"temperature":0,"top_p":0.50}`, false}, true},
		{"forced absent temperature equals itself with stream",
			req{chatPath, `{"model":"m","messages":[]}`, true},
			req{chatPath, `{"model":"m","messages":[],"stream":true}`, true}, true},

		{"different message", base,
			req{chatPath, `{"model":"gpt-4.1","messages":[{"role":"user","content":"hello"}],"temperature":0}`, false}, false},
		{"different role", base,
			req{chatPath, `{"model":"gpt-4.1","messages":[{"role":"system","content":"hi"}],"temperature":0}`, false}, false},
		{"message order",
			req{chatPath, `{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}],"temperature":0}`, false},
			req{chatPath, `{"model":"m","messages":[{"role":"user","content":"b"},{"role":"user","content":"a"}],"temperature":0}`, false}, false},
		{"different model", base,
			req{chatPath, `{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"hi"}],"temperature":0}`, false}, false},
		{"different temperature (forced)", base,
			req{chatPath, `{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"temperature":0.7}`, true}, false},
		{"absent temperature (forced)", base,
			req{chatPath, `{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}`, true}, false},
		{"different path", base, req{"/v1/completions", baseBody, false}, false},
		{"different max_tokens",
			req{chatPath, `{"model":"m","messages":[],"temperature":0,"max_tokens":100}`, false},
			req{chatPath, `{"model":"m","messages":[],"temperature":0,"max_tokens":101}`, false}, false},
		{"seeds beyond float64 precision",
			req{chatPath, `{"model":"m","messages":[],"temperature":0,"seed":9007199254740993}`, false},
			req{chatPath, `{"model":"m","messages":[],"temperature":0,"seed":9007199254740992}`, false}, false},
		{"tools", base,
			req{chatPath, `{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"temperature":0,"tools":[{"type":"function","function":{"name":"f"}}]}`, false}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ka := mustKey(t, tt.a.path, tt.a.body, tt.a.force)
			kb := mustKey(t, tt.b.path, tt.b.body, tt.b.force)
			if (ka == kb) != tt.same {
				t.Fatalf("same key = %v, want %v\n a: %s\n b: %s", ka == kb, tt.same, ka, kb)
			}
		})
	}
}

// verdict is what Key makes of a request.
type verdict int

const (
	cacheable   verdict = iota // a key
	uncacheable                // no key, no error: the answer may vary
	invalid                    // an error: not a JSON object
)

func TestKeyCacheability(t *testing.T) {
	tests := []struct {
		name string
		req  req
		want verdict
	}{
		{"temperature 0", req{chatPath, baseBody, false}, cacheable},
		{"temperature 0.7", req{chatPath, `{"model":"m","messages":[],"temperature":0.7}`, false}, uncacheable},
		{"temperature 0.7 forced", req{chatPath, `{"model":"m","messages":[],"temperature":0.7}`, true}, cacheable},
		{"temperature absent (default 1)", req{chatPath, `{"model":"m","messages":[]}`, false}, uncacheable},
		{"temperature absent forced", req{chatPath, `{"model":"m","messages":[]}`, true}, cacheable},
		{"temperature null", req{chatPath, `{"model":"m","messages":[],"temperature":null}`, false}, uncacheable},
		{"temperature as a string", req{chatPath, `{"model":"m","messages":[],"temperature":"0"}`, false}, uncacheable},
		{"tiny non-zero temperature", req{chatPath, `{"model":"m","messages":[],"temperature":1e-9}`, false}, uncacheable},
		{"embeddings sample nothing", req{embedPath, `{"model":"text-embedding-3-small","input":"hi"}`, false}, cacheable},

		{"malformed JSON", req{chatPath, `{"model":`, false}, invalid},
		{"empty body", req{chatPath, ``, false}, invalid},
		{"array body", req{chatPath, `[1,2]`, false}, invalid},
		{"null body", req{chatPath, `null`, false}, invalid},
		{"string body", req{chatPath, `"hi"`, true}, invalid},
		{"two objects", req{chatPath, `{"temperature":0} {}`, false}, invalid},
		{"trailing garbage", req{chatPath, `{"temperature":0}}`, false}, invalid},
	}
	keyShape := regexp.MustCompile(`^relaygate:cache:v2:test:[0-9a-f]{64}$`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, ok, err := Key(testScope, tt.req.path, []byte(tt.req.body), tt.req.force)
			if wantErr := tt.want == invalid; (err != nil) != wantErr {
				t.Fatalf("err = %v, want error %v", err, wantErr)
			}
			if wantOK := tt.want == cacheable; ok != wantOK {
				t.Fatalf("ok = %v, want %v", ok, wantOK)
			}
			if ok && !keyShape.MatchString(key) {
				t.Fatalf("key %q does not look like %s", key, keyShape)
			}
			if !ok && key != "" {
				t.Fatalf("uncacheable request got key %q", key)
			}
		})
	}
}

func TestCanonicalNumber(t *testing.T) {
	tests := []struct{ in, want string }{
		{"0", "0"}, {"-0", "0"}, {"0.0", "0"}, {"-0.0", "0"}, {"0e10", "0"},
		{"1", "1"}, {"1.0", "1"}, {"1e0", "1"}, {"10E-1", "1"},
		{"0.5", "0.5"}, {"0.50", "0.5"}, {"5e-1", "0.5"},
		{"-3", "-3"}, {"-3.000", "-3"},
		{"12345678901234567890", "12345678901234567890"},
		{"1e400", "1e400"}, // beyond float64: kept as written
	}
	for _, tt := range tests {
		if got := canonicalNumber(tt.in); got != tt.want {
			t.Errorf("canonicalNumber(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
