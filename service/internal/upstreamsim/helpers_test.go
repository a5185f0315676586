package upstreamsim

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
)

// testTimeout guards every wait in these tests. It is a failure guard only:
// nothing passes or fails on how quickly the shared machine gets there.
const testTimeout = 15 * time.Second

// startSim serves a simulator over loopback for the test's lifetime.
func startSim(t *testing.T, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	sim := New(cfg)
	ts := httptest.NewServer(sim)
	t.Cleanup(ts.Close)
	return sim, ts
}

// newClient is the real OpenAI Go client pointed at the simulator.
func newClient(ts *httptest.Server, key string) *openai.Client {
	cfg := openai.DefaultConfig(key)
	cfg.BaseURL = ts.URL + "/v1"
	cfg.HTTPClient = ts.Client()
	return openai.NewClientWithConfig(cfg)
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// post sends a raw request, for what the client library hides (headers,
// exact bodies, malformed input).
func post(t *testing.T, ts *httptest.Server, method, path, key, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(testContext(t), method, ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, data
}

// requestOK is post for a request that must succeed: any status but 200
// fails the test.
func requestOK(t *testing.T, ts *httptest.Server, method, path, body string) (*http.Response, []byte) {
	t.Helper()
	resp, data := post(t, ts, method, path, "", body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: status %d: %s", method, path, resp.StatusCode, data)
	}
	return resp, data
}

// errorBody is OpenAI's error shape, decoded strictly enough to catch a
// missing field.
type errorBody struct {
	Error *struct {
		Message *string `json:"message"`
		Type    *string `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func decodeError(t *testing.T, data []byte) (typ, code string) {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal(data, &e); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, data)
	}
	if e.Error == nil || e.Error.Message == nil || *e.Error.Message == "" || e.Error.Type == nil {
		t.Fatalf("error body lacks error.message or error.type: %s", data)
	}
	var raw map[string]map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatalf("error body: %v", err)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := raw["error"][k]; !ok {
			t.Fatalf("error body lacks error.%s: %s", k, data)
		}
	}
	if e.Error.Code != nil {
		code = *e.Error.Code
	}
	return *e.Error.Type, code
}

// waitForStats polls the counters until ok holds. The server updates them
// when it notices a client is gone, which happens on its own schedule.
func waitForStats(t *testing.T, sim *Server, what string, ok func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		st := sim.Stats()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; stats: %+v", what, st)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func chatRequestFor(model, prompt string) openai.ChatCompletionRequest {
	return openai.ChatCompletionRequest{
		Model: model,
		Messages: []openai.ChatCompletionMessage{
			{Role: openai.ChatMessageRoleSystem, Content: "You are terse."},
			{Role: openai.ChatMessageRoleUser, Content: prompt},
		},
	}
}

// withMaxTokens sets the deprecated max_tokens (0: none), which clients
// still send and the simulator must honour.
func withMaxTokens(req openai.ChatCompletionRequest, n int) openai.ChatCompletionRequest {
	//lint:ignore SA1019 clients still send max_tokens; the simulator must honour it
	req.MaxTokens = n
	return req
}

// promptTokensOf is the documented estimate, computed independently of the
// server's code: ceil(bytes of message text / 4).
func promptTokensOf(req openai.ChatCompletionRequest) int {
	n := 0
	for _, m := range req.Messages {
		n += len(m.Content)
		for _, p := range m.MultiContent {
			n += len(p.Text)
		}
	}
	return (n + 3) / 4
}
