package gateway

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// TestCacheScope: with two client keys and a real Redis, a cached answer
// (and its Age) reaches the other key only under cache.scope global; the
// default keeps each key's cache its own.
func TestCacheScope(t *testing.T) {
	rds := testenv.StartRedis(t)
	const otherKey = "sk-test-other-client-key-9876543"
	tests := []struct {
		scope  string // "" leaves it to the default
		shared bool
	}{
		{"", false},
		{"key", false},
		{"team", false}, // no teams yet: each key is a team of its own
		{"global", true},
	}
	for i, tt := range tests {
		name := tt.scope
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			up := newFakeUpstream(t, okCompletion)
			scope := ""
			if tt.scope != "" {
				scope = ", scope: " + tt.scope
			}
			srv, _, m := newGateway(t, gwOpts{noAuth: true, redisURL: rds.URL, extra: fmt.Sprintf("client_keys: [%q, %q]\ncache: {redis_url: %q, ttl: 1h%s}\n",
				testClientKey, otherKey, rds.URL, scope)}, up)

			// One prompt per subtest: they share the Redis.
			body := fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":"scope %d"}],"temperature":0}`, i)
			first := post(t, srv.URL, "/v1/chat/completions", body)
			if first.status != http.StatusOK || first.header.Get("X-Cache") != "MISS" {
				t.Fatalf("first request: %d X-Cache %q", first.status, first.header.Get("X-Cache"))
			}
			// The answer is stored after the client has it, before the
			// request is counted: wait for the count, not for a time.
			waitMetric(t, m, "relaygate_requests_total", map[string]string{"model": "m", "upstream": "a", "code": "200"}, 1)

			same := post(t, srv.URL, "/v1/chat/completions", body)
			if same.header.Get("X-Cache") != "HIT" {
				t.Fatalf("the same key again: X-Cache %q, want HIT", same.header.Get("X-Cache"))
			}
			other := post(t, srv.URL, "/v1/chat/completions", body, "Authorization", "Bearer "+otherKey)
			if other.status != http.StatusOK {
				t.Fatalf("other key: %d %s", other.status, other.body)
			}
			want, wantCalls := "MISS", int32(2)
			if tt.shared {
				want, wantCalls = "HIT", 1
			}
			if got := other.header.Get("X-Cache"); got != want {
				t.Errorf("the other key: X-Cache %q, want %q (Age %q)", got, want, other.header.Get("Age"))
			}
			if !tt.shared && other.header.Get("Age") != "" {
				t.Errorf("the other key learns the age of someone else's request: Age %q", other.header.Get("Age"))
			}
			if n := up.calls.Load(); n != wantCalls {
				t.Errorf("the upstream was asked %d times, want %d", n, wantCalls)
			}
		})
	}
}

// TestMessagesCache: a deterministic Messages answer (temperature 0) and a
// token count are cached like chat's; other anthropic-beta headers are
// another request; a stream of the same request is the cached answer
// replayed as its events (cache.MessagesStreamReplay).
func TestMessagesCache(t *testing.T) {
	rds := testenv.StartRedis(t)
	sim := upstreamsim.New(upstreamsim.Config{})
	up := newFakeUpstream(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if body, _ := io.ReadAll(r.Body); strings.Contains(string(body), `"stream":true`) {
			r.Body = io.NopCloser(strings.NewReader(string(body)))
			sim.ServeHTTP(w, r)
			return
		}
		if r.URL.Path == "/v1/messages/count_tokens" {
			_, _ = io.WriteString(w, `{"input_tokens":3}`)
			return
		}
		_, _ = io.WriteString(w, messageJSON)
	})
	srv, _, m := newGateway(t, gwOpts{redisURL: rds.URL, extra: fmt.Sprintf("cache: {redis_url: %q, ttl: 1h}\n", rds.URL)}, up)

	const msg = `{"model":"m","max_tokens":8,"temperature":0,"messages":[{"role":"user","content":"cache me"}]}`
	const count = `{"model":"m","messages":[{"role":"user","content":"cache me"}]}`
	steps := []struct {
		name, path, body string
		hdr              []string
		want             string
		calls            int32
	}{
		{"first message", "/v1/messages", msg, nil, "MISS", 1},
		{"the same again", "/v1/messages", msg, nil, "HIT", 1},
		{"another beta", "/v1/messages", msg, []string{"Anthropic-Beta", "b1"}, "MISS", 2},
		{"streamed", "/v1/messages", strings.Replace(msg, `"temperature":0`, `"temperature":0,"stream":true`, 1), nil, "HIT", 2},
		{"first count", "/v1/messages/count_tokens", count, nil, "MISS", 3},
		{"the same count", "/v1/messages/count_tokens", count, nil, "HIT", 3},
	}
	for _, s := range steps {
		r := post(t, srv.URL, s.path, s.body, s.hdr...)
		if got := r.header.Get("X-Cache"); got != s.want || up.calls.Load() != s.calls {
			t.Fatalf("%s: %d X-Cache %q, upstream calls %d; want %q, %d", s.name, r.status, got, up.calls.Load(), s.want, s.calls)
		}
		if s.want == "HIT" && string(r.body) != string(post(t, srv.URL, s.path, s.body, s.hdr...).body) {
			t.Errorf("%s: a hit differs from the next hit", s.name)
		}
		// An answer is stored before its request is counted.
		waitMetric(t, m, "relaygate_requests_total", map[string]string{"model": "m", "api": "messages", "upstream": "a", "code": "200"}, float64(s.calls))
	}

	// The official SDK streams the cached answer and accumulates what the
	// whole answer says; the upstream is asked only for the whole one.
	// (The SDK has no temperature: it asks for caching with the header.)
	ac := anthropicClient(srv.URL, option.WithHeader(CacheHeader, "force"))
	p := anthropic.MessageNewParams{Model: "m", MaxTokens: 8, Messages: userText("cache me too")}
	whole, err := ac.Messages.New(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	streamed, err := streamMessage(t, ac, p)
	if err != nil {
		t.Fatal(err)
	}
	if up.calls.Load() != 4 || streamed.ID != whole.ID || len(streamed.Content) != 1 || streamed.Content[0].Text != whole.Content[0].Text ||
		streamed.StopReason != whole.StopReason || streamed.Usage.InputTokens != whole.Usage.InputTokens || streamed.Usage.OutputTokens != whole.Usage.OutputTokens {
		t.Errorf("streamed from the cache: %+v (upstream calls %d), whole: %+v", streamed, up.calls.Load(), whole)
	}
}
