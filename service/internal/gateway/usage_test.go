package gateway

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestUsageBounds(t *testing.T) {
	const chat = `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
	image := `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}`
	cases := []struct {
		name               string
		ep                 endpoint
		body               string
		prompt, completion int64
		reasoning          int64
		want               bool
	}{
		{"honest", epChat, chat, 9, 20, 0, true},
		{"2^31-1 each", epChat, chat, 1<<31 - 1, 1<<31 - 1, 0, false},
		{"negative", epChat, chat, -1, 5, 0, false},
		{"prompt larger than the body could hold", epChat, chat, 100_000, 5, 0, false},
		{"an image by URL may cost many tokens", epChat, image, 50_000, 5, 0, true},
		{"but not without bound", epChat, image, maxPromptTokens + 1, 5, 0, false},
		{"within max_tokens", epChat, `{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`, 9, 10, 0, true},
		{"over max_tokens", epChat, `{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`, 9, 5000, 0, false},
		{"max_completion_tokens, reasoning included", epChat, `{"model":"m","max_completion_tokens":4000,"messages":[{"role":"user","content":"hi"}]}`, 9, 4000, 0, true},
		{"n choices of max_tokens", epChat, `{"model":"m","max_tokens":10,"n":3,"messages":[{"role":"user","content":"hi"}]}`, 9, 30, 0, true},
		{"no max_tokens: an output limit's worth", epChat, chat, 9, 200_000, 0, true},
		{"no max_tokens: not without bound", epChat, chat, 9, maxCompletionTokens + 1, 0, false},
		{"embeddings produce no completion", epEmbeddings, `{"model":"m","input":"hi"}`, 2, 1, 0, false},
		{"embeddings of token arrays", epEmbeddings, `{"model":"m","input":[[1,2,3,4]]}`, 4, 0, 0, true},
		{"reasoning beyond max_tokens (DeepSeek's reasoner)", epChat, `{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`, 9, 20_100, 20_000, true},
		{"a Responses follow-up counts its earlier turns as input", epResponses, `{"model":"m","previous_response_id":"resp_1","input":"and then?"}`, 400_000, 50, 0, true},
		{"a Responses request without stored context", epResponses, `{"model":"m","input":"and then?"}`, 400_000, 50, 0, false},
		{"server-side web search brings pages into the prompt", epResponses, `{"model":"m","tools":[{"type":"web_search"}],"input":"news?"}`, 60_000, 50, 0, true},
		{"Anthropic's web search tool", epMessages, `{"model":"m","max_tokens":100,"tools":[{"type":"web_search_20250305","name":"web_search"}],"messages":[{"role":"user","content":"news?"}]}`, 60_000, 50, 0, true},
		{"reasoning claimed without bound", epChat, `{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`, 9, 1<<31 - 1, 1<<31 - 1, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, e := parseRequest([]byte(tc.body), tc.ep)
			if e != nil {
				t.Fatal(e)
			}
			x := exchange{ep: tc.ep, reqBytes: len(tc.body), reqBody: []byte(tc.body), maxTokens: req.maxTokens, n: req.choices}
			x.setUsage(tc.prompt, tc.completion, tc.reasoning)
			if x.usageKnown != tc.want || x.usageSuspicious == tc.want {
				t.Errorf("usage %d/%d: known %t, suspicious %t; want known %t", tc.prompt, tc.completion, x.usageKnown, x.usageSuspicious, tc.want)
			}
		})
	}
}

// messageJSON is a whole Messages answer as Anthropic sends it.
const messageJSON = `{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":2}}`

// TestMessageUsageBounds: Messages' usage is bounded as chat's, the
// prompt bound covering input and cache tokens together and max_tokens
// bounding the output; absurd usage is counted, not billed.
func TestMessageUsageBounds(t *testing.T) {
	const body = `{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`
	cases := []struct {
		name  string
		usage string
		want  bool
	}{
		{"honest, with cache tokens", `{"input_tokens":5,"cache_creation_input_tokens":1000,"cache_read_input_tokens":2000,"output_tokens":100}`, true},
		{"output over max_tokens", `{"input_tokens":5,"output_tokens":5000}`, false},
		{"cache reads the body could not hold", `{"input_tokens":5,"cache_read_input_tokens":100000,"output_tokens":1}`, false},
		{"negative cache write", `{"input_tokens":5000,"cache_creation_input_tokens":-4990,"output_tokens":1}`, false},
		{"counts that would wrap around", `{"input_tokens":9223372036854775807,"cache_creation_input_tokens":9223372036854775807,"cache_read_input_tokens":2,"output_tokens":1}`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, e := parseRequest([]byte(body), epMessages)
			if e != nil {
				t.Fatal(e)
			}
			x := exchange{ep: epMessages, reqBytes: len(body), reqBody: []byte(body), maxTokens: req.maxTokens, msgUsage: noMessageUsage}
			x.readUsage([]byte(`{"type":"message","usage":` + tc.usage + `}`))
			if x.usageKnown != tc.want || x.usageSuspicious == tc.want {
				t.Errorf("known %t, suspicious %t; want known %t", x.usageKnown, x.usageSuspicious, tc.want)
			}
		})
	}
}

// TestAbsurdUsageIsNotBilled: an answer reporting 2³¹-1 tokens adds
// nothing to the cost and the token counts, and counts as suspicious.
func TestAbsurdUsageIsNotBilled(t *testing.T) {
	up := newFakeUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, strings.Replace(completionJSON, `"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}`,
			`"usage":{"prompt_tokens":2147483647,"completion_tokens":2147483647,"total_tokens":4294967294}`, 1))
	})
	srv, _, m := newGateway(t, gwOpts{}, up)
	if res := post(t, srv.URL, "/v1/chat/completions", chatBody); res.status != http.StatusOK {
		t.Fatalf("%d %s", res.status, res.body)
	}
	waitMetric(t, m, "relaygate_usage_suspicious_total", map[string]string{"model": "m"}, 1)
	if got := metricValue(t, m, "relaygate_cost_usd_total", map[string]string{"model": "m", "upstream": "a"}); got != 0 {
		t.Errorf("relaygate_cost_usd_total = $%.2f", got)
	}
	for _, kind := range []string{"prompt", "completion"} {
		if got := metricValue(t, m, "relaygate_tokens_total", map[string]string{"model": "m", "kind": kind}); got != 0 {
			t.Errorf("%s tokens: %v", kind, got)
		}
	}
}

func TestCacheableAnswer(t *testing.T) {
	cases := []struct {
		ep   endpoint
		ct   string
		body string
		want bool
	}{
		{epChat, "application/json", completionJSON, true},
		{epChat, "application/json; charset=utf-8", completionJSON, true},
		{epChat, "text/html", completionJSON, false},
		{epChat, "", completionJSON, false},
		{epChat, "application/json", `<html>busy</html>`, false},
		{epChat, "application/json", `{"object":"chat.completion","choices":[]}`, false},
		{epChat, "application/json", `{"object":"list","data":[{"embedding":[1]}]}`, false},
		{epChat, "application/json", completionJSON[:len(completionJSON)-1], false},
		{epEmbeddings, "application/json", `{"object":"list","data":[{"object":"embedding","embedding":[0.1]}]}`, true},
		{epEmbeddings, "application/json", completionJSON, false},
		{epMessages, "application/json", messageJSON, true},
		{epMessages, "application/json", completionJSON, false},
		{epMessages, "application/json", `{"type":"error","error":{"type":"api_error","message":"x"}}`, false},
		{epChat, "application/json", messageJSON, false},
		{epCountTokens, "application/json", `{"input_tokens":12}`, true},
		{epCountTokens, "application/json", messageJSON, false},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			if got := cacheableAnswer(tc.ep, tc.ct, []byte(tc.body)); got != tc.want {
				t.Errorf("cacheableAnswer(%v, %q, %.60s) = %t, want %t", tc.ep, tc.ct, tc.body, got, tc.want)
			}
		})
	}
}

// TestChatCachedTokensPricedAsCacheReads: Chat Completions' cached prompt
// tokens (prompt_tokens_details.cached_tokens) cost the cache read price,
// whole and streamed, as OpenAI bills them; without one they cost input.
func TestChatCachedTokensPricedAsCacheReads(t *testing.T) {
	const usage = `"usage":{"prompt_tokens":1000,"completion_tokens":100,"total_tokens":1100,"prompt_tokens_details":{"cached_tokens":800}}`
	for _, tt := range []struct {
		name, price string
		stream      bool
		want        float64 // dollars
	}{
		// 200 input at $1, 800 cache reads at $0.25, 100 output at $2 per million.
		{"whole with cache price", "{input_per_mtok: 1, output_per_mtok: 2, cache_read_per_mtok: 0.25}", false, (200*1 + 800*0.25 + 100*2) / 1e6},
		{"stream with cache price", "{input_per_mtok: 1, output_per_mtok: 2, cache_read_per_mtok: 0.25}", true, (200*1 + 800*0.25 + 100*2) / 1e6},
		{"no cache price", "{input_per_mtok: 1, output_per_mtok: 2}", false, (1000*1 + 100*2) / 1e6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			up := newFakeUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
				if tt.stream {
					w.Header().Set("Content-Type", "text/event-stream")
					_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],"+usage+"}\n\ndata: [DONE]\n\n")
					return
				}
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, strings.Replace(completionJSON, `"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}`, usage, 1))
			})
			srv, _, m := newGateway(t, gwOpts{price: tt.price}, up)
			body := chatBody
			if tt.stream {
				body = `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
			}
			if res := post(t, srv.URL, "/v1/chat/completions", body); res.status != http.StatusOK {
				t.Fatalf("%d %s", res.status, res.body)
			}
			// The cost is counted last of the request's metrics, after
			// the answer went out: wait for it.
			cost := func() float64 {
				return metricValue(t, m, "relaygate_cost_usd_total", map[string]string{"model": "m", "upstream": "a"})
			}
			for deadline := time.Now().Add(10 * time.Second); cost() == 0 && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
			if got := cost(); math.Abs(got-tt.want) > 1e-12 {
				t.Errorf("cost $%.9f, want $%.9f", got, tt.want)
			}
		})
	}
}
