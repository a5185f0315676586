package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestDuplicateKeysRefused: a body the gateway and an upstream could read
// differently (a key twice, or a key the gateway reads in another case) is
// refused with a 400 naming the key; bodies that merely look alike pass.
func TestDuplicateKeysRefused(t *testing.T) {
	const msgs = `"messages":[{"role":"user","content":"hi"}]`
	many := func(n int, extra string) string {
		var b strings.Builder
		b.WriteString(`{"model":"m",` + msgs)
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, `,"k%d":%d`, i, i)
		}
		return b.String() + extra + "}"
	}
	tests := []struct {
		name  string
		body  string
		ep    endpoint
		code  string // "" accepted
		param string
	}{
		{"model twice", `{"model":"gpt-4.1","model":"m",` + msgs + `}`, epChat, "duplicate_key", "model"},
		{"model in capitals too", `{"model":"m","MODEL":"gpt-4.1-nano",` + msgs + `}`, epChat, "invalid_key_case", "MODEL"},
		{"model escaped is the same key", `{"model":"gpt-4.1","\u006dodel":"m",` + msgs + `}`, epChat, "duplicate_key", "model"},
		{"messages twice", `{"model":"m",` + msgs + `,"messages":[{"role":"user","content":"other"}]}`, epChat, "duplicate_key", "messages"},
		{"input twice", `{"model":"m","input":"a","input":"b"}`, epEmbeddings, "duplicate_key", "input"},
		{"stream twice", `{"model":"m",` + msgs + `,"stream":false,"stream":true}`, epChat, "duplicate_key", "stream"},
		{"Stream alone", `{"model":"m",` + msgs + `,"Stream":true}`, epChat, "invalid_key_case", "Stream"},
		{"long s folds to s", `{"model":"m",` + msgs + `,"ſtream":true}`, epChat, "invalid_key_case", "ſtream"},
		{"Kelvin sign folds to k", `{"model":"m",` + msgs + `,"max_to\u212aens":1}`, epChat, "invalid_key_case", "max_to\u212aens"},
		{"N alone: the usage bound reads n", `{"model":"m",` + msgs + `,"max_tokens":5,"N":50}`, epChat, "invalid_key_case", "N"},
		{"stream_options twice", `{"model":"m",` + msgs + `,"stream_options":{},"stream_options":{"include_usage":false}}`, epChat, "duplicate_key", "stream_options"},
		{"include_usage twice", `{"model":"m",` + msgs + `,"stream_options":{"include_usage":true,"include_usage":false}}`, epChat, "duplicate_key", "include_usage"},
		{"include_usage in capitals", `{"model":"m",` + msgs + `,"stream_options":{"include_usage":true,"Include_Usage":false}}`, epChat, "invalid_key_case", "Include_Usage"},
		{"temperature twice", `{"model":"m",` + msgs + `,"temperature":0,"temperature":1}`, epChat, "duplicate_key", "temperature"},
		{"a key the gateway ignores, twice", `{"model":"m",` + msgs + `,"tools":[],"tools":[{"type":"function"}]}`, epChat, "duplicate_key", "tools"},
		{"lone surrogates decode alike", `{"model":"m",` + msgs + `,"\ud800":1,"\udbff":2}`, epChat, "duplicate_key", "\ufffd"},
		{"duplicate after the 16th key", many(40, `,"k3":0`), epChat, "duplicate_key", "k3"},
		{"duplicate of the 17th key", many(40, `,"k15":0`), epChat, "duplicate_key", "k15"},

		{"many distinct keys", many(200, ""), epChat, "", ""},
		{"prefixes are not duplicates", `{"model":"m",` + msgs + `,"mode":1,"models":2,"top_p":1,"top_pp":2}`, epChat, "", ""},
		{"case variants of keys the gateway ignores", `{"model":"m",` + msgs + `,"user":"a","User":"b"}`, epChat, "", ""},
		{"the same key in two objects", `{"model":"m",` + msgs + `,"stream_options":{"model":1},"metadata":{"model":2}}`, epChat, "", ""},
		// Nested duplicates are the cache key's business: it keeps every
		// member (cache.Key), so they cannot make two prompts share an entry.
		{"nested duplicates pass", `{"model":"m","messages":[{"role":"user","content":"a","content":"b"}]}`, epChat, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, e := parseRequest([]byte(tt.body), tt.ep)
			switch {
			case tt.code == "" && e != nil:
				t.Fatalf("refused (%s): %s", e.Code, e.Message)
			case tt.code == "":
			case e == nil:
				t.Fatalf("accepted, want a 400 %s", tt.code)
			case e.Status != http.StatusBadRequest || e.Code != tt.code || e.Param != tt.param || !strings.Contains(e.Message, "'"+tt.param+"'"):
				t.Fatalf("got %d %s param %v: %s; want 400 %s naming %q", e.Status, e.Code, e.Param, e.Message, tt.code, tt.param)
			}
		})
	}
}

// TestDuplicateModelNeverReachesAnUpstream: over HTTP, a body routed by one
// model and served by another is refused before any upstream is asked.
func TestDuplicateModelNeverReachesAnUpstream(t *testing.T) {
	up := newFakeUpstream(t, okCompletion)
	gw, _, _ := newGateway(t, gwOpts{}, up)
	for _, body := range []string{
		`{"model":"m","model":"gpt-4.1-nano","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"gpt-4.1-nano","model":"m","messages":[{"role":"user","content":"hi"}]}`,
		`{"MODEL":"gpt-4.1-nano","model":"m","messages":[{"role":"user","content":"hi"}]}`,
	} {
		r := post(t, gw.URL, "/v1/chat/completions", body)
		if r.status != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400: %s", body, r.status, r.body)
			continue
		}
		if _, typ, _ := openAIError(t, r.body); typ != typeInvalidRequest {
			t.Errorf("%s: error type %q", body, typ)
		}
	}
	if n := up.calls.Load(); n != 0 {
		t.Fatalf("the upstream was asked %d times", n)
	}
}

// topLevelKeys lists a JSON object's keys in order, duplicates included,
// as encoding/json decodes them.
func topLevelKeys(t *testing.T, b []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %v %v", tok, err)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// checkNoAmbiguousKeys fails when an accepted body has a top-level key
// twice or one of readKeys in another case.
func checkNoAmbiguousKeys(t *testing.T, body []byte) {
	t.Helper()
	seen := map[string]bool{}
	for _, k := range topLevelKeys(t, body) {
		if seen[k] {
			t.Fatalf("accepted a body with %q twice: %q", k, body)
		}
		seen[k] = true
		for _, r := range readKeys {
			if k != r && strings.EqualFold(k, r) {
				t.Fatalf("accepted a body with %q beside the %q the gateway reads: %q", k, r, body)
			}
		}
	}
}
