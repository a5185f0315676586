package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// simUpstream serves a simulator as a gateway upstream, keeping the headers
// of each request it got.
func simUpstream(t *testing.T, cfg upstreamsim.Config) (*fakeUpstream, func() []http.Header) {
	t.Helper()
	sim := upstreamsim.New(cfg)
	var mu sync.Mutex
	var seen []http.Header
	f := newFakeUpstream(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Clone())
		mu.Unlock()
		sim.ServeHTTP(w, r)
	})
	return f, func() []http.Header {
		mu.Lock()
		defer mu.Unlock()
		return append([]http.Header(nil), seen...)
	}
}

// anthropicClient is the unmodified Anthropic SDK pointed at the gateway,
// with its own retries off so that what a test sees is the gateway's doing.
func anthropicClient(gwURL string, opts ...option.RequestOption) anthropic.Client {
	return anthropic.NewClient(append([]option.RequestOption{
		option.WithBaseURL(gwURL), option.WithAPIKey(testClientKey), option.WithMaxRetries(0),
	}, opts...)...)
}

func userText(s string) []anthropic.MessageParam {
	return []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(s))}
}

// streamMessage reads a whole stream through the SDK's accumulator.
func streamMessage(t *testing.T, c anthropic.Client, p anthropic.MessageNewParams) (anthropic.Message, error) {
	t.Helper()
	s := c.Messages.NewStreaming(context.Background(), p)
	defer s.Close()
	var msg anthropic.Message
	for s.Next() {
		if err := msg.Accumulate(s.Current()); err != nil {
			t.Fatalf("accumulate: %v", err)
		}
	}
	return msg, s.Err()
}

// TestAnthropicClient drives /v1/messages with the official Anthropic Go
// SDK, as Claude Code or a team's code would after changing its base URL.
func TestAnthropicClient(t *testing.T) {
	up, headers := simUpstream(t, upstreamsim.Config{APIKey: "upstream-key-a", CompletionTokens: 12, TokensPerChunk: 2})
	gwSrv, _, _ := newGateway(t, gwOpts{upstream: ", auth: x-api-key"}, up)
	c := anthropicClient(gwSrv.URL)
	ctx := context.Background()
	params := anthropic.MessageNewParams{Model: "m", MaxTokens: 64, Messages: userText("Say hello")}

	whole, err := c.Messages.New(ctx, params)
	if err != nil {
		t.Fatalf("messages.new: %v", err)
	}
	if len(whole.Content) != 1 || whole.Content[0].Type != "text" || len(strings.Fields(whole.Content[0].Text)) != 12 ||
		whole.StopReason != anthropic.StopReasonEndTurn || whole.Usage.OutputTokens != 12 || whole.Usage.InputTokens != 3 {
		t.Errorf("message = %+v", whole)
	}
	// The SDK sent its key as x-api-key; the upstream got the gateway's
	// key the same way, and the SDK's anthropic-version
	// (TestMessagesHeaders checks the exact values).
	h := headers()[0]
	if h.Get("X-Api-Key") != "upstream-key-a" || h.Get("Authorization") != "" || h.Get("Anthropic-Version") == "" {
		t.Errorf("upstream headers: x-api-key %q, authorization %q, anthropic-version %q",
			h.Get("X-Api-Key"), h.Get("Authorization"), h.Get("Anthropic-Version"))
	}

	t.Run("stream", func(t *testing.T) {
		msg, err := streamMessage(t, c, params)
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if len(msg.Content) != 1 || msg.Content[0].Text != whole.Content[0].Text || msg.StopReason != anthropic.StopReasonEndTurn ||
			msg.Usage.OutputTokens != 12 || msg.Usage.InputTokens != 3 {
			t.Errorf("accumulated %+v, want the whole answer's text %q", msg, whole.Content[0].Text)
		}
	})

	t.Run("count_tokens", func(t *testing.T) {
		n, err := c.Messages.CountTokens(ctx, anthropic.MessageCountTokensParams{Model: "m", Messages: userText("Say hello")})
		if err != nil || n.InputTokens != 3 {
			t.Errorf("count_tokens = %+v, %v; want 3", n, err)
		}
	})

	t.Run("tool call", func(t *testing.T) {
		p := params
		p.Tools = []anthropic.ToolUnionParam{anthropic.ToolUnionParamOfTool(anthropic.ToolInputSchemaParam{
			Properties: map[string]any{"query": map[string]any{"type": "string"}}}, "lookup")}
		p.ToolChoice = anthropic.ToolChoiceUnionParam{OfAny: &anthropic.ToolChoiceAnyParam{}}
		check := func(how string, m *anthropic.Message) {
			if len(m.Content) != 1 || m.StopReason != anthropic.StopReasonToolUse {
				t.Fatalf("%s: %+v", how, m)
			}
			tu := m.Content[0].AsToolUse()
			var in struct{ Query string }
			if tu.Name != "lookup" || json.Unmarshal(tu.Input, &in) != nil || len(strings.Fields(in.Query)) != 12 {
				t.Errorf("%s: tool_use %s %s", how, tu.Name, tu.Input)
			}
		}
		m, err := c.Messages.New(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		check("whole", m)
		sm, err := streamMessage(t, c, p)
		if err != nil {
			t.Fatal(err)
		}
		check("stream", &sm)
	})

	t.Run("bearer auth", func(t *testing.T) {
		bc := anthropic.NewClient(option.WithBaseURL(gwSrv.URL), option.WithAuthToken(testClientKey), option.WithMaxRetries(0))
		if _, err := bc.Messages.New(ctx, params); err != nil {
			t.Errorf("Authorization: Bearer refused: %v", err)
		}
	})

	for _, tc := range []struct {
		name   string
		client anthropic.Client
		model  string
		status int
		typ    string
	}{
		{"wrong key", anthropicClient(gwSrv.URL, option.WithAPIKey("sk-wrong-key-0000000000")), "m", 401, "authentication_error"},
		{"unknown model", c, "nope", 404, "not_found_error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.Messages.New(ctx, anthropic.MessageNewParams{Model: tc.model, MaxTokens: 8, Messages: userText("x")})
			var apiErr *anthropic.Error
			if !errors.As(err, &apiErr) || apiErr.StatusCode != tc.status || string(apiErr.Type()) != tc.typ || apiErr.Message == "" {
				t.Errorf("err = %v; want a %d %s the SDK parses", err, tc.status, tc.typ)
			}
		})
	}
}

// TestAnthropicStreamCommitPoint: an error event after message_start comes
// before any content, so the gateway falls back and the client sees one
// clean stream from the next upstream; a break after content reaches the
// SDK as an error, never as a finished message.
func TestAnthropicStreamCommitPoint(t *testing.T) {
	params := anthropic.MessageNewParams{Model: "m", MaxTokens: 64, Messages: userText("Say hello")}

	t.Run("fallback before content", func(t *testing.T) {
		failing, _ := simUpstream(t, upstreamsim.Config{ErrorAfterStartRate: 1})
		healthy, _ := simUpstream(t, upstreamsim.Config{CompletionTokens: 5})
		gwSrv, _, m := newGateway(t, gwOpts{}, failing, healthy)
		msg, err := streamMessage(t, anthropicClient(gwSrv.URL), params)
		if err != nil || len(msg.Content) != 1 || len(strings.Fields(msg.Content[0].Text)) != 5 || msg.StopReason != anthropic.StopReasonEndTurn {
			t.Fatalf("stream = %+v, %v; want one whole answer from the second upstream", msg, err)
		}
		if failing.calls.Load() != 2 || healthy.calls.Load() != 1 {
			t.Errorf("calls: failing %d, healthy %d; want 2 (retried) and 1", failing.calls.Load(), healthy.calls.Load())
		}
		waitMetric(t, m, "relaygate_fallbacks_total", map[string]string{"from": "a", "to": "b"}, 1)
		waitMetric(t, m, "relaygate_tokens_total", map[string]string{"model": "m", "api": "messages", "kind": "completion"}, 5)
	})

	t.Run("error after content", func(t *testing.T) {
		// Events: message_start with ping, content_block_start, then
		// deltas; the cut comes after the second delta.
		cut, _ := simUpstream(t, upstreamsim.Config{CompletionTokens: 8, CutRate: 1, CutAfterChunks: 4})
		spare, _ := simUpstream(t, upstreamsim.Config{})
		gwSrv, _, m := newGateway(t, gwOpts{}, cut, spare)
		msg, err := streamMessage(t, anthropicClient(gwSrv.URL), params)
		var apiErr *anthropic.Error
		if !errors.As(err, &apiErr) || string(apiErr.Type()) != "api_error" {
			t.Fatalf("err = %v (message %+v); want the gateway's api_error event", err, msg)
		}
		if len(msg.Content) != 1 || len(strings.Fields(msg.Content[0].Text)) != 2 {
			t.Errorf("before the error the client had %+v; want the two deltas sent", msg.Content)
		}
		if spare.calls.Load() != 0 {
			t.Error("fell back after content had reached the client")
		}
		waitMetric(t, m, "relaygate_requests_total", map[string]string{"model": "m", "api": "messages", "upstream": "a", "code": "502"}, 1)
	})
}

// TestMessagesCost: a Messages request's cost is the vendor's arithmetic,
// each kind of token at its price: input, cache writes, cache reads,
// output.
func TestMessagesCost(t *testing.T) {
	up, _ := simUpstream(t, upstreamsim.Config{CompletionTokens: 7})
	gwSrv, _, m := newGateway(t, gwOpts{price: "{input_per_mtok: 3, output_per_mtok: 15, cache_write_per_mtok: 3.75, cache_read_per_mtok: 0.30}"}, up)
	c := anthropicClient(gwSrv.URL)
	block := anthropic.TextBlockParam{Text: strings.Repeat("cached context ", 300), CacheControl: anthropic.NewCacheControlEphemeralParam()}
	params := anthropic.MessageNewParams{Model: "m", MaxTokens: 64, System: []anthropic.TextBlockParam{block}, Messages: userText("question")}

	var want float64
	var writes, reads int64
	add := func(u anthropic.Usage) {
		want += (float64(u.InputTokens)*3 + float64(u.CacheCreationInputTokens)*3.75 +
			float64(u.CacheReadInputTokens)*0.30 + float64(u.OutputTokens)*15) / 1e6
		writes += u.CacheCreationInputTokens
		reads += u.CacheReadInputTokens
	}
	first, err := c.Messages.New(context.Background(), params) // writes the cache
	if err != nil {
		t.Fatal(err)
	}
	add(first.Usage)
	second, err := c.Messages.New(context.Background(), params) // reads it
	if err != nil {
		t.Fatal(err)
	}
	add(second.Usage)
	streamed, err := streamMessage(t, c, params) // reads it, usage from message_start and message_delta
	if err != nil {
		t.Fatal(err)
	}
	add(streamed.Usage)
	if writes == 0 || reads != 2*writes {
		t.Fatalf("cache writes %d, reads %d: the simulator did not cache", writes, reads)
	}
	waitMetric(t, m, "relaygate_requests_total", map[string]string{"model": "m", "api": "messages", "upstream": "a", "code": "200"}, 3)
	got := metricValue(t, m, "relaygate_cost_usd_total", map[string]string{"model": "m", "api": "messages", "upstream": "a"})
	if math.Abs(got-want) > 1e-12 {
		t.Errorf("relaygate_cost_usd_total = %.12f, want %.12f", got, want)
	}
	prompt := float64(3*(first.Usage.InputTokens) + writes + reads)
	if got := metricValue(t, m, "relaygate_tokens_total", map[string]string{"model": "m", "api": "messages", "kind": "prompt"}); got != prompt {
		t.Errorf("prompt tokens counted %v, want %v (input and cache tokens)", got, prompt)
	}
}

// TestMessagesHeaders: anthropic-version and anthropic-beta reach the
// upstream as the client sent them (a default version when it sent none),
// no other client header does, and the upstream's key goes as its auth
// says.
func TestMessagesHeaders(t *testing.T) {
	const body = `{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`
	tests := []struct {
		name     string
		upstream string
		hdr      []string
		version  string
		beta     []string
		keyIn    string
	}{
		{"client's version and betas, x-api-key upstream", ", auth: x-api-key",
			[]string{"Authorization", "", "X-Api-Key", testClientKey, "Anthropic-Version", "2023-01-01", "Anthropic-Beta", "b1,b2", "X-Secret", "s"},
			"2023-01-01", []string{"b1,b2"}, "X-Api-Key"},
		{"default version, bearer upstream", "", nil, "2023-06-01", nil, "Authorization"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up, headers := simUpstream(t, upstreamsim.Config{})
			gwSrv, _, _ := newGateway(t, gwOpts{upstream: tc.upstream}, up)
			if r := post(t, gwSrv.URL, "/v1/messages", body, tc.hdr...); r.status != 200 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			h := headers()[0]
			if got := h.Get("Anthropic-Version"); got != tc.version {
				t.Errorf("anthropic-version %q, want %q", got, tc.version)
			}
			if got := h.Values("Anthropic-Beta"); strings.Join(got, "|") != strings.Join(tc.beta, "|") {
				t.Errorf("anthropic-beta %q, want %q", got, tc.beta)
			}
			if h.Get("X-Secret") != "" {
				t.Error("a client header the gateway does not forward reached the upstream")
			}
			want := map[string]string{"X-Api-Key": "upstream-key-a", "Authorization": "Bearer upstream-key-a"}
			for name, v := range want {
				if name != tc.keyIn {
					v = ""
				}
				if got := h.Get(name); got != v {
					t.Errorf("upstream %s = %q, want %q", name, got, v)
				}
			}
		})
	}
}

// TestMessagesErrorShapes: every error a Messages client gets is in
// Anthropic's shape, with the status and type Anthropic would give.
func TestMessagesErrorShapes(t *testing.T) {
	failing := newFakeUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	})
	refusing := newFakeUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":{"message":"max_tokens: too large","type":"invalid_request_error"}}`))
	})
	okBody := `{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`
	gwFail, _, _ := newGateway(t, gwOpts{maxBody: 2048}, failing)
	gwRefuse, _, _ := newGateway(t, gwOpts{}, refusing)
	tests := []struct {
		name   string
		url    string
		path   string
		body   string
		hdr    []string
		status int
		typ    string
		says   string
	}{
		{"no key", gwFail.URL, "/v1/messages", okBody, []string{"Authorization", ""}, 401, "authentication_error", "x-api-key"},
		{"wrong x-api-key", gwFail.URL, "/v1/messages", okBody, []string{"Authorization", "", "X-Api-Key", "sk-wrong-wrong-wrong"}, 401, "authentication_error", "Incorrect"},
		{"bad JSON", gwFail.URL, "/v1/messages", `{"model":`, nil, 400, "invalid_request_error", "JSON"},
		{"no messages", gwFail.URL, "/v1/messages/count_tokens", `{"model":"m"}`, nil, 400, "invalid_request_error", "messages"},
		{"duplicate key", gwFail.URL, "/v1/messages", `{"model":"m","model":"x","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`, nil, 400, "invalid_request_error", "more than once"},
		{"unknown model", gwFail.URL, "/v1/messages", strings.Replace(okBody, `"m"`, `"nope"`, 1), nil, 404, "not_found_error", "nope"},
		{"too large", gwFail.URL, "/v1/messages", strings.Replace(okBody, "hi", strings.Repeat("x", 4096), 1), nil, 413, "request_too_large", "limit"},
		{"upstreams exhausted", gwFail.URL, "/v1/messages", okBody, nil, 502, "api_error", "could not be served"},
		{"upstream refusal rewrapped", gwRefuse.URL, "/v1/messages", okBody, nil, 400, "invalid_request_error", "max_tokens: too large"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := post(t, tc.url, tc.path, tc.body, tc.hdr...)
			var e struct {
				Type  string `json:"type"`
				Error struct {
					Type    string `json:"type"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal(r.body, &e); err != nil || r.status != tc.status || e.Type != "error" ||
				e.Error.Type != tc.typ || !strings.Contains(e.Error.Message, tc.says) {
				t.Errorf("%d %s; want %d, Anthropic's shape, type %s, saying %q", r.status, r.body, tc.status, tc.typ, tc.says)
			}
		})
	}
	// A method the endpoint does not take.
	req, _ := http.NewRequest(http.MethodGet, gwFail.URL+"/v1/messages", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Type  string
		Error struct{ Type string }
	}
	if json.NewDecoder(resp.Body).Decode(&e) != nil || resp.StatusCode != 405 || e.Type != "error" || e.Error.Type != "invalid_request_error" {
		t.Errorf("GET /v1/messages: %d %+v", resp.StatusCode, e)
	}
}

// TestMessagesCommit finds the commit point in held events.
func TestMessagesCommit(t *testing.T) {
	const start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n"
	tests := []struct {
		name   string
		events string
		commit bool
		failed bool
	}{
		{"message_start and ping are held", start, false, false},
		{"an empty text block is held", start + "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n", false, false},
		{"an empty thinking block is held", start + "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n", false, false},
		{"a delta commits", start + "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n", true, false},
		{"a tool_use start commits", start + "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\n", true, false},
		{"an error fails", start + "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n", false, true},
		{"no event lines: data types", "data: {\"type\":\"message_start\"}\n\ndata: {\"type\":\"content_block_delta\"}\n\n", true, false},
		{"CRLF events", "event: message_start\r\ndata: {}\r\n\r\nevent: content_block_delta\r\ndata: {}\r\n\r\n", true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			commit, failed := messagesCommit([]byte(tc.events))
			if commit != tc.commit || (failed != nil) != tc.failed {
				t.Errorf("commit %v, failed %q; want %v, %v", commit, failed, tc.commit, tc.failed)
			}
		})
	}
}
