package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/metrics"
)

// newYAMLGateway serves a gateway for a whole YAML config, for tests whose
// models or upstreams newGateway's fixed shape cannot express.
func newYAMLGateway(t *testing.T, yaml string) (*httptest.Server, *metrics.Metrics) {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yaml)
	}
	m := metrics.New()
	gw := New(cfg, Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)), Metrics: m})
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	return srv, m
}

func do(t *testing.T, method, url string, body io.Reader, hdr ...string) result {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, resp.Header, b}
}

func TestModelByID(t *testing.T) {
	up := newFakeUpstream(t, okCompletion)
	gw, _ := newYAMLGateway(t, fmt.Sprintf(`
client_keys: [%q]
upstreams:
  - {name: a, base_url: %q}
models:
  - {name: m, route: [a]}
  - {name: deepseek-ai/DeepSeek-V3, route: [a]}
`, testClientKey, up.URL+"/v1"))
	auth := "Bearer " + testClientKey
	tests := []struct {
		name, method, path, auth string
		status                   int
		id, code                 string
	}{
		{"plain id", "GET", "/v1/models/m", auth, 200, "m", ""},
		{"id with a slash", "GET", "/v1/models/deepseek-ai/DeepSeek-V3", auth, 200, "deepseek-ai/DeepSeek-V3", ""},
		{"unknown id", "GET", "/v1/models/gpt-5", auth, 404, "", "model_not_found"},
		{"unknown id under a known prefix", "GET", "/v1/models/deepseek-ai/nope", auth, 404, "", "model_not_found"},
		{"empty id", "GET", "/v1/models/", auth, 404, "", "model_not_found"},
		{"no key", "GET", "/v1/models/m", "", 401, "", "invalid_api_key"},
		{"wrong method", "POST", "/v1/models/m", auth, 405, "", "method_not_allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr []string
			if tt.auth != "" {
				hdr = []string{"Authorization", tt.auth}
			}
			res := do(t, tt.method, gw.URL+tt.path, nil, hdr...)
			if res.status != tt.status {
				t.Fatalf("status %d, want %d: %s", res.status, tt.status, res.body)
			}
			if tt.code != "" {
				if _, _, code := openAIError(t, res.body); code != tt.code {
					t.Errorf("code %q, want %q", code, tt.code)
				}
				return
			}
			var got map[string]any
			if err := json.Unmarshal(res.body, &got); err != nil {
				t.Fatalf("not JSON: %s", res.body)
			}
			if got["id"] != tt.id || got["object"] != "model" || got["owned_by"] != "relaygate" || got["created"] == nil || len(got) != 4 {
				t.Errorf("model = %s, want {id: %s, object: model, created, owned_by}", res.body, tt.id)
			}
			if !strings.HasPrefix(res.header.Get("Content-Type"), "application/json") {
				t.Errorf("Content-Type %q", res.header.Get("Content-Type"))
			}
		})
	}
}

// TestQuotaAndOpenCircuitsWithTheOpenAISDK: the official openai-go client
// sees a rate limit (429 with the shortest Retry-After the upstreams gave)
// when every upstream is rate limited, and a 503 with Retry-After set to
// the next probe when every circuit is open, rather than a 502 outage.
func TestQuotaAndOpenCircuitsWithTheOpenAISDK(t *testing.T) {
	limited := func(after string) func(int, http.ResponseWriter, *http.Request) {
		return func(_ int, w http.ResponseWriter, _ *http.Request) {
			if after != "" {
				w.Header().Set("Retry-After", after)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, `{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}`)
		}
	}
	down := func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }
	tests := []struct {
		name     string
		a, b     func(int, http.ResponseWriter, *http.Request)
		breakerN int
		warmup   int // requests before the one checked, to open circuits
		status   int
		code     string
		// retryAfter bounds the Retry-After the client gets (0, 0: none).
		minAfter, maxAfter int
	}{
		{name: "every upstream 429: the shortest Retry-After", a: limited("7"), b: limited("3"),
			status: 429, code: "rate_limit_exceeded", minAfter: 3, maxAfter: 3},
		{name: "429 without Retry-After still says when", a: limited(""), b: limited(""),
			status: 429, code: "rate_limit_exceeded", minAfter: 1, maxAfter: 1},
		{name: "an HTTP-date Retry-After", a: limited(time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)), b: limited("5"),
			status: 429, code: "rate_limit_exceeded", minAfter: 5, maxAfter: 5},
		{name: "429 and an outage is an outage", a: limited("3"), b: down,
			status: 502, code: "upstream_failed"},
		{name: "every circuit open: Retry-After is the next probe", a: down, b: down, breakerN: 1, warmup: 1,
			status: 503, code: "upstreams_unavailable", minAfter: 3590, maxAfter: 3600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newFakeUpstream(t, tt.a), newFakeUpstream(t, tt.b)
			gw, _, m := newGateway(t, gwOpts{attempts: 1, breakerN: tt.breakerN, backoff: "10s"}, a, b)
			client := openai.NewClient(option.WithBaseURL(gw.URL+"/v1/"), option.WithAPIKey(testClientKey), option.WithMaxRetries(0))
			params := openai.ChatCompletionNewParams{Model: "m", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}
			for range tt.warmup {
				_, _ = client.Chat.Completions.New(context.Background(), params)
			}
			calls := a.calls.Load() + b.calls.Load()
			_, err := client.Chat.Completions.New(context.Background(), params)
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("err %v, want an *openai.Error", err)
			}
			if apiErr.StatusCode != tt.status || apiErr.Code != tt.code {
				t.Fatalf("SDK saw %d %q (%s), want %d %q", apiErr.StatusCode, apiErr.Code, apiErr.Message, tt.status, tt.code)
			}
			after := apiErr.Response.Header.Get("Retry-After")
			if tt.maxAfter == 0 {
				if after != "" {
					t.Errorf("Retry-After %q on a %d", after, tt.status)
				}
			} else if n, err := strconv.Atoi(after); err != nil || n < tt.minAfter || n > tt.maxAfter {
				t.Errorf("Retry-After %q, want %d..%d", after, tt.minAfter, tt.maxAfter)
			}
			if tt.status == 429 && (apiErr.Type != typeRateLimit || !strings.Contains(apiErr.Message, "rate limited")) {
				t.Errorf("type %q message %q", apiErr.Type, apiErr.Message)
			}
			if tt.status == 503 && a.calls.Load()+b.calls.Load() != calls {
				t.Errorf("an upstream with an open circuit was called")
			}
			waitMetric(t, m, "relaygate_requests_total", map[string]string{"model": "m", "upstream": "none", "code": strconv.Itoa(tt.status)}, 1)
		})
	}
}

// TestRoutesFollowTheAPIsUpstreamsSpeak: a model's route for an API uses
// only the upstreams that declare it, and an API none of them speaks is a
// 400 naming the model, the API and the upstreams.
func TestRoutesFollowTheAPIsUpstreamsSpeak(t *testing.T) {
	type hit struct{ upstream, path string }
	var mu sync.Mutex
	var hits []hit
	serve := func(name string) *fakeUpstream {
		return newFakeUpstream(t, func(_ int, w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			hits = append(hits, hit{name, r.URL.Path})
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			if strings.HasSuffix(r.URL.Path, "/embeddings") {
				_, _ = io.WriteString(w, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1]}],"model":"m","usage":{"prompt_tokens":1,"total_tokens":1}}`)
				return
			}
			_, _ = io.WriteString(w, completionJSON)
		})
	}
	chat, emb, both := serve("chat-only"), serve("emb-only"), serve("default")
	gw, _ := newYAMLGateway(t, fmt.Sprintf(`
client_keys: [%q]
upstreams:
  - {name: chat-only, base_url: %q, apis: [chat]}
  - {name: emb-only, base_url: %q, apis: [embeddings]}
  - {name: default, base_url: %q}
  - {name: anthropic, base_url: "https://api.anthropic.com/v1"}
models:
  - {name: mixed, route: [chat-only, emb-only]}
  - {name: chatty, route: [chat-only]}
  - {name: fallback, route: [chat-only, default]}
  - {name: claude, route: [anthropic]}
`, testClientKey, chat.URL+"/v1", emb.URL+"/v1", both.URL+"/v1"))
	const embBody = `{"model":%q,"input":"hi"}`
	const chatReq = `{"model":%q,"messages":[{"role":"user","content":"hi"}]}`
	tests := []struct {
		name, path, body string
		status           int
		upstream         string   // X-Relaygate-Upstream
		msg              []string // in the error message
	}{
		{"chat goes to the upstream that speaks chat", "/v1/chat/completions", fmt.Sprintf(chatReq, "mixed"), 200, "chat-only", nil},
		{"embeddings skip the chat-only upstream", "/v1/embeddings", fmt.Sprintf(embBody, "mixed"), 200, "emb-only", nil},
		{"the default speaks embeddings", "/v1/embeddings", fmt.Sprintf(embBody, "fallback"), 200, "default", nil},
		{"an API no upstream speaks", "/v1/embeddings", fmt.Sprintf(embBody, "chatty"), 400, "",
			[]string{"Model chatty is not served for the embeddings API", "(chat-only)", "set apis: on an upstream"}},
		{"Anthropic's default is messages only", "/v1/chat/completions", fmt.Sprintf(chatReq, "claude"), 400, "",
			[]string{"Model claude is not served for the chat API", "(anthropic)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			hits = nil
			mu.Unlock()
			res := post(t, gw.URL, tt.path, tt.body)
			if res.status != tt.status {
				t.Fatalf("status %d, want %d: %s", res.status, tt.status, res.body)
			}
			mu.Lock()
			got := append([]hit(nil), hits...)
			mu.Unlock()
			if tt.status != 200 {
				msg, typ, code := openAIError(t, res.body)
				if code != "api_not_served" || typ != typeInvalidRequest {
					t.Errorf("code %q type %q", code, typ)
				}
				for _, w := range tt.msg {
					if !strings.Contains(msg, w) {
						t.Errorf("message %q does not say %q", msg, w)
					}
				}
				if len(got) != 0 {
					t.Errorf("upstreams asked: %v", got)
				}
				return
			}
			if u := res.header.Get("X-Relaygate-Upstream"); u != tt.upstream {
				t.Errorf("answered by %q, want %q", u, tt.upstream)
			}
			if len(got) != 1 || got[0].upstream != tt.upstream || got[0].path != "/v1"+strings.TrimPrefix(tt.path, "/v1") {
				t.Errorf("upstream calls %v, want one to %s", got, tt.upstream)
			}
		})
	}
	// Every model is listed, whatever APIs it is served for.
	res := do(t, "GET", gw.URL+"/v1/models", nil, "Authorization", "Bearer "+testClientKey)
	for _, name := range []string{"mixed", "chatty", "fallback", "claude"} {
		if !strings.Contains(string(res.body), `"id":"`+name+`"`) {
			t.Errorf("/v1/models does not list %s: %s", name, res.body)
		}
	}
}

// TestAPILabel: request metrics and the request log line carry the API of
// the endpoint, so chat and embeddings traffic of one model can be told
// apart.
func TestAPILabel(t *testing.T) {
	up := newFakeUpstream(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/embeddings") {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1]}],"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}`)
			return
		}
		writeSSE(w, r, 2, 0)
	})
	var logs syncBuffer
	gw, _, m := newGateway(t, gwOpts{logWriter: &logs}, up)
	tests := []struct {
		api, path, body string
		tokens          float64 // prompt tokens counted for the API
	}{
		{"chat", "/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`, 7},
		{"embeddings", "/v1/embeddings", `{"model":"m","input":"hi"}`, 3},
	}
	for _, tt := range tests {
		t.Run(tt.api, func(t *testing.T) {
			if res := post(t, gw.URL, tt.path, tt.body); res.status != 200 {
				t.Fatalf("status %d: %s", res.status, res.body)
			}
			waitMetric(t, m, "relaygate_requests_total", map[string]string{"model": "m", "api": tt.api, "upstream": "a", "code": "200"}, 1)
			for _, name := range []string{"relaygate_request_duration_seconds", "relaygate_tokens_total"} {
				labels := map[string]string{"model": "m", "api": tt.api}
				want := 1.0
				if name == "relaygate_tokens_total" {
					labels["kind"], want = "prompt", tt.tokens
				}
				if got := metricValue(t, m, name, labels); got != want {
					t.Errorf("%s%v = %v, want %v", name, labels, got, want)
				}
			}
			if !strings.Contains(logs.String(), `"api":"`+tt.api+`","model":"m"`) {
				t.Errorf("no request log line with api %s:\n%s", tt.api, logs.String())
			}
		})
	}
	if got := metricValue(t, m, "relaygate_ttft_seconds", map[string]string{"model": "m", "api": "chat"}); got != 1 {
		t.Errorf("relaygate_ttft_seconds{api=chat} count = %v, want 1", got)
	}
}

// syncBuffer is a log sink the handler writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestCORS(t *testing.T) {
	up := newFakeUpstream(t, okCompletion)
	const app = "https://app.example.com"
	on, _, _ := newGateway(t, gwOpts{extra: "cors: {allowed_origins: [\"" + app + "\"], allowed_headers: [X-Custom], max_age: 5m}\n"}, up)
	anyOrigin, _, _ := newGateway(t, gwOpts{extra: "cors: {allowed_origins: [\"*\"]}\n"}, up)
	off, _, _ := newGateway(t, gwOpts{}, up)
	preflight := []string{"Origin", app, "Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization,content-type"}
	key := []string{"Authorization", "Bearer " + testClientKey}
	tests := []struct {
		name, method, path string
		gw                 *httptest.Server
		hdr                []string
		body               string
		status             int
		want               map[string]string // header → a substring it must hold; "" must be absent
	}{
		{"preflight needs no key", "OPTIONS", "/v1/chat/completions", on, preflight, "", 204, map[string]string{
			"Access-Control-Allow-Origin":  app,
			"Access-Control-Allow-Methods": "POST",
			"Access-Control-Max-Age":       "300",
			"Vary":                         "Origin",
		}},
		{"preflight to a model id with a slash", "OPTIONS", "/v1/models/deepseek-ai/DeepSeek-V3", on, preflight, "", 204, map[string]string{
			"Access-Control-Allow-Origin": app, "Access-Control-Allow-Methods": "GET",
		}},
		{"preflight from an origin not allowed", "OPTIONS", "/v1/chat/completions", on,
			[]string{"Origin", "https://evil.example", "Access-Control-Request-Method", "POST"}, "", 204, map[string]string{
				"Access-Control-Allow-Origin": "", "Access-Control-Allow-Headers": "", "Vary": "Origin",
			}},
		{"an answer carries the origin and the exposed headers", "POST", "/v1/chat/completions", on,
			append([]string{"Origin", app}, key...), chatBody, 200, map[string]string{
				"Access-Control-Allow-Origin":   app,
				"Access-Control-Expose-Headers": "X-Request-Id, X-Relaygate-Upstream, X-Upstream-Request-Id, X-Cache, Retry-After",
				"Access-Control-Allow-Methods":  "",
			}},
		{"an error answer too, so the page can read it", "POST", "/v1/chat/completions", on,
			[]string{"Origin", app}, chatBody, 401, map[string]string{"Access-Control-Allow-Origin": app}},
		{"an answer to an origin not allowed has none", "POST", "/v1/chat/completions", on,
			append([]string{"Origin", "https://evil.example"}, key...), chatBody, 200, map[string]string{"Access-Control-Allow-Origin": ""}},
		{"OPTIONS that is no preflight is still a 405", "OPTIONS", "/v1/chat/completions", on, []string{"Origin", app}, "", 405, map[string]string{"Allow": "POST"}},
		{"no CORS outside the API", "OPTIONS", "/metrics", on, preflight, "", 200, map[string]string{"Access-Control-Allow-Origin": ""}},
		{"* allows any origin, echoed", "OPTIONS", "/v1/embeddings", anyOrigin,
			[]string{"Origin", "https://other.example", "Access-Control-Request-Method", "POST"}, "", 204, map[string]string{
				"Access-Control-Allow-Origin": "https://other.example", "Access-Control-Max-Age": "600",
			}},
		{"off: a preflight is a 405 with Allow", "OPTIONS", "/v1/chat/completions", off, preflight, "", 405, map[string]string{
			"Allow": "POST", "Access-Control-Allow-Origin": "", "Vary": "",
		}},
		{"off: answers carry no CORS header", "POST", "/v1/chat/completions", off, append([]string{"Origin", app}, key...), chatBody, 200, map[string]string{
			"Access-Control-Allow-Origin": "", "Access-Control-Expose-Headers": "",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			res := do(t, tt.method, tt.gw.URL+tt.path, body, tt.hdr...)
			if res.status != tt.status {
				t.Fatalf("status %d, want %d: %s", res.status, tt.status, res.body)
			}
			for h, want := range tt.want {
				got := strings.Join(res.header.Values(h), ", ")
				if want == "" && got != "" || !strings.Contains(got, want) {
					t.Errorf("%s = %q, want %q", h, got, want)
				}
			}
		})
	}
	// The preflight allows every header the SDKs send, and the configured ones.
	res := do(t, "OPTIONS", on.URL+"/v1/messages", nil, preflight...)
	allowed := strings.ToLower(res.header.Get("Access-Control-Allow-Headers"))
	for _, h := range []string{"authorization", "content-type", "x-api-key", "anthropic-version", "anthropic-beta", "x-request-id", "x-relaygate-cache", "x-stainless-os", "x-custom"} {
		if !slices.Contains(strings.Split(allowed, ", "), h) {
			t.Errorf("Access-Control-Allow-Headers %q lacks %s", allowed, h)
		}
	}
}
