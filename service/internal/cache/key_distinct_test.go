package cache

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
)

// TestKeyKeepsWhatUpstreamsTellApart: two bodies an upstream can read as
// different requests must never share an entry, or one client plants the
// answer another gets. Lone surrogates (which encoding/json and gjson
// decode to U+FFFD), and duplicate keys at any depth (which a map keeps one
// of) are where a lossy canonical form would merge them.
func TestKeyKeepsWhatUpstreamsTellApart(t *testing.T) {
	body := func(content string) string {
		return `{"model":"m","messages":[{"role":"user","content":"` + content + `"}],"temperature":0}`
	}
	tests := []struct {
		name string
		a, b string
		same bool
	}{
		{"lone high surrogates", body(`\ud800`), body(`\udbff`), false},
		{"lone high surrogate and U+FFFD", body(`\ud800`), body(`\ufffd`), false},
		{"lone low surrogate and U+FFFD", body(`\udc00`), body(`\ufffd`), false},
		{"lone surrogate and its escaped text", body(`\ud800`), body(`\\ud800`), false},
		{"surrogate case is one escape", body(`\uD800`), body(`\ud800`), true},
		{"reversed pair is two lone surrogates", body(`\ude00\ud83d`), body(`\ufffd\ufffd`), false},
		{"pair then lone", body(`\ud83d\ude00\ud800`), body(`😀\ufffd`), false},
		{"lone surrogates in keys", `{"temperature":0,"\ud800":1}`, `{"temperature":0,"\udbff":1}`, false},
		{"nested duplicate keys", `{"model":"m","messages":[{"role":"user","content":"A","content":"B"}],"temperature":0}`,
			`{"model":"m","messages":[{"role":"user","content":"B"}],"temperature":0}`, false},
		{"order of duplicates", `{"temperature":0,"x":{"a":1,"a":2}}`, `{"temperature":0,"x":{"a":2,"a":1}}`, false},

		{"escaped U+FFFD is U+FFFD", body(`\ufffd`), body("\uFFFD"), true},
		{"escaped pair is the character", body(`\ud83d\ude00`), body(`😀`), true},
		{"escaped solidus", body(`a\/b`), body(`a/b`), true},
		{"control escapes", body(`\n\t\u0001`), body(`\u000a\u0009\u0001`), true},
		{"escaped quote", body(`say \"hi\"`), body(`say \u0022hi\u0022`), true},
		{"escaped key", `{"temperature":0,"m\u006fdel":"m"}`, `{"temperature":0,"model":"m"}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ka := mustKey(t, chatPath, tt.a, false)
			kb := mustKey(t, chatPath, tt.b, false)
			if (ka == kb) != tt.same {
				t.Fatalf("same key = %v, want %v\n a: %s\n b: %s", ka == kb, tt.same, tt.a, tt.b)
			}
		})
	}
}

// TestKeyScope: one request in two scopes is two entries; a scope that
// could be confused with the key's own separators is refused.
func TestKeyScope(t *testing.T) {
	a, _, errA := Key("key.0123456789abcdef", chatPath, []byte(baseBody), false)
	b, _, errB := Key("key.fedcba9876543210", chatPath, []byte(baseBody), false)
	g, _, errG := Key("global", chatPath, []byte(baseBody), false)
	if errA != nil || errB != nil || errG != nil {
		t.Fatal(errA, errB, errG)
	}
	if a == b || a == g || b == g {
		t.Fatalf("scopes share keys: %s %s %s", a, b, g)
	}
	if !strings.HasPrefix(a, KeyPrefix+"key.0123456789abcdef:") {
		t.Fatalf("key %s does not start with its scope", a)
	}
	for _, bad := range []string{"", "a:b"} {
		if k, ok, err := Key(bad, chatPath, []byte(baseBody), false); err == nil || ok || k != "" {
			t.Errorf("scope %q: key %q, ok %v, err %v; want an error", bad, k, ok, err)
		}
	}
}

// FuzzKeyCanonical: the canonical form of any JSON object is valid JSON that
// decodes (with encoding/json, which keeps the last of duplicate keys and
// reads lone surrogates as U+FFFD) to what the body decodes to, numbers
// normalised and ignored fields dropped: it loses nothing a decoder sees,
// and it is the same for the body re-indented.
func FuzzKeyCanonical(f *testing.F) {
	for _, s := range []string{
		baseBody,
		`{"a":"\ud800\udbff\ud83d\ude00\\u0041\"\n","a":[1.0,-0,1e2,{"b":null,"b":true}],"stream":true}`,
		`{"\u0041":{"z":1,"y":[],"x":{}},"A":"\/\b\f\r\t\u0000\u001f\u2028"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var want map[string]any
		if !json.Valid(body) || json.Unmarshal(body, &want) != nil || want == nil {
			return
		}
		c := &canonicaliser{}
		c.object(gjson.ParseBytes(body), true)
		dec := json.NewDecoder(bytes.NewReader(c.buf))
		dec.UseNumber()
		var got map[string]any
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("canonical form is not JSON (%v):\n body: %q\n form: %q", err, body, c.buf)
		}
		dec = json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		want = nil
		_ = dec.Decode(&want)
		for _, k := range ignoredFields {
			delete(want, k)
		}
		if !reflect.DeepEqual(got, normaliseNumbers(want)) {
			t.Fatalf("canonical form reads differently:\n body: %q\n form: %q", body, c.buf)
		}
		var indented bytes.Buffer
		if err := json.Indent(&indented, body, "", "  "); err != nil {
			t.Fatal(err)
		}
		k1, ok1, err1 := Key(testScope, chatPath, body, true)
		k2, ok2, err2 := Key(testScope, chatPath, indented.Bytes(), true)
		if err1 != nil || err2 != nil || !ok1 || !ok2 || k1 != k2 {
			t.Fatalf("indenting changed the key: %q %v %v / %q %v %v", k1, ok1, err1, k2, ok2, err2)
		}
	})
}

// normaliseNumbers rewrites every number in v to canonicalNumber's spelling.
func normaliseNumbers(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = normaliseNumbers(x)
		}
		return v
	case []any:
		for i, x := range v {
			v[i] = normaliseNumbers(x)
		}
		return v
	case json.Number:
		return json.Number(canonicalNumber(string(v)))
	default:
		return v
	}
}

// TestKeyForVariant: the same Messages body under other anthropic headers
// is another request (beta features change the answer), other endpoints
// never share, and a token count needs no temperature to be cached.
func TestKeyForVariant(t *testing.T) {
	const msg = `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"temperature":0}`
	const sampled = `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`
	key := func(path, variant, body string) string {
		t.Helper()
		k, ok, err := KeyFor("global", path, variant, []byte(body), false)
		if err != nil || !ok {
			t.Fatalf("KeyFor(%s, %q): ok %v, err %v", path, variant, ok, err)
		}
		return k
	}
	plain, _, _ := Key("global", "/chat/completions", []byte(msg), false)
	tests := []struct {
		name string
		a, b string
		same bool
	}{
		{"empty variant keys as Key", key("/chat/completions", "", msg), plain, true},
		{"same variant", key("/messages", "v=1\x00beta=a", msg), key("/messages", "v=1\x00beta=a", msg), true},
		{"beta differs", key("/messages", "v=1\x00beta=a", msg), key("/messages", "v=1\x00beta=b", msg), false},
		{"variant or none", key("/messages", "v=1", msg), key("/messages", "", msg), false},
		{"messages is not chat", key("/messages", "", msg), plain, false},
		{"count_tokens is not messages", key("/messages/count_tokens", "", msg), key("/messages", "", msg), false},
		{"count_tokens is deterministic", key("/messages/count_tokens", "", sampled), key("/messages/count_tokens", "", sampled), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if (tt.a == tt.b) != tt.same {
				t.Errorf("keys %s and %s: same = %v, want %v", tt.a, tt.b, tt.a == tt.b, tt.same)
			}
		})
	}
	if _, ok, _ := KeyFor("global", "/messages", "", []byte(sampled), false); ok {
		t.Error("a sampled Messages request (no temperature 0) was cacheable")
	}
}
