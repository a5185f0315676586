package upstreamsim

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
)

// postMessages sends a Messages request with Anthropic's headers.
func postMessages(t *testing.T, url, path, key, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(testContext(t), http.MethodPost, url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("anthropic-version", "2023-06-01")
	if key != "" {
		req.Header.Set("x-api-key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp, b.Bytes()
}

// sseEvents splits a stream into its event names and data.
func sseEvents(t *testing.T, b []byte) (names []string, data []string) {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "event: "); ok {
			names = append(names, v)
		}
		if v, ok := strings.CutPrefix(line, "data: "); ok {
			data = append(data, v)
		}
	}
	return names, data
}

// cachedSystem marks a system prompt of 400 bytes (100 tokens) cached; the
// user's 8 bytes (2 tokens) are not.
var cachedSystem = `{"model":"claude","max_tokens":64,"system":[{"type":"text","text":"` + strings.Repeat("abcd", 100) +
	`","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"say hi!!"}]`

func TestMessagesWholeAndCache(t *testing.T) {
	_, ts := startSim(t, Config{APIKey: "k-sim", CompletionTokens: 6})
	usage := func() gjson.Result {
		resp, body := postMessages(t, ts.URL, "/v1/messages", "k-sim", cachedSystem+"}")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		r := gjson.ParseBytes(body)
		if r.Get("type").Str != "message" || r.Get("role").Str != "assistant" || r.Get("content.0.type").Str != "text" ||
			len(strings.Fields(r.Get("content.0.text").Str)) != 6 || r.Get("stop_reason").Str != "end_turn" ||
			!strings.HasPrefix(r.Get("id").Str, "msg_") {
			t.Fatalf("message = %s", body)
		}
		return r.Get("usage")
	}
	first, second := usage(), usage()
	for _, c := range []struct {
		name      string
		u         gjson.Result
		in, w, rd int64
	}{{"first writes the prefix", first, 2, 100, 0}, {"second reads it", second, 2, 0, 100}} {
		if c.u.Get("input_tokens").Int() != c.in || c.u.Get("cache_creation_input_tokens").Int() != c.w ||
			c.u.Get("cache_read_input_tokens").Int() != c.rd || c.u.Get("output_tokens").Int() != 6 {
			t.Errorf("%s: usage %s, want input %d, write %d, read %d, output 6", c.name, c.u.Raw, c.in, c.w, c.rd)
		}
	}
}

func TestMessagesStream(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		wantEvents string
		wantStop   string
	}{
		{"text", `{"model":"m","max_tokens":1,"stream":true,"messages":[{"role":"user","content":"hi"}]}`,
			"message_start ping content_block_start content_block_delta content_block_stop message_delta message_stop", "max_tokens"},
		{"tool call", `{"model":"m","max_tokens":50,"stream":true,"tools":[{"name":"lookup","input_schema":{"type":"object"}}],"tool_choice":{"type":"any"},"messages":[{"role":"user","content":"hi"}]}`,
			"message_start ping content_block_start content_block_delta content_block_delta content_block_delta content_block_delta content_block_stop message_delta message_stop", "tool_use"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, ts := startSim(t, Config{CompletionTokens: 2})
			resp, body := postMessages(t, ts.URL, "/v1/messages", "", tc.body)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("status %d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
			names, data := sseEvents(t, body)
			if got := strings.Join(names, " "); got != tc.wantEvents {
				t.Fatalf("events %s\nwant   %s", got, tc.wantEvents)
			}
			if got := gjson.Get(data[len(data)-2], "delta.stop_reason").Str; got != tc.wantStop {
				t.Errorf("stop_reason %q, want %q", got, tc.wantStop)
			}
			if gjson.Get(data[0], "message.usage.input_tokens").Int() != 1 {
				t.Errorf("message_start usage: %s", data[0])
			}
			if tc.name == "tool call" {
				var input strings.Builder
				for _, d := range data {
					input.WriteString(gjson.Get(d, "delta.partial_json").Str)
				}
				var v struct{ Query string }
				if err := json.Unmarshal([]byte(input.String()), &v); err != nil || len(strings.Fields(v.Query)) != 2 {
					t.Errorf("tool input %q: %v", input.String(), err)
				}
				if gjson.Get(data[2], "content_block.name").Str != "lookup" {
					t.Errorf("tool block: %s", data[2])
				}
			}
		})
	}
}

func TestMessagesErrorAfterStart(t *testing.T) {
	sim, ts := startSim(t, Config{ErrorAfterStartRate: 1})
	resp, body := postMessages(t, ts.URL, "/v1/messages", "", `{"model":"m","max_tokens":3,"stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	names, data := sseEvents(t, body)
	if resp.StatusCode != 200 || strings.Join(names, " ") != "message_start ping error" {
		t.Fatalf("status %d, events %v: %s", resp.StatusCode, names, body)
	}
	if gjson.Get(data[2], "type").Str != "error" || gjson.Get(data[2], "error.type").Str != "overloaded_error" {
		t.Errorf("error event: %s", data[2])
	}
	if got := sim.Stats().Faults[FaultErrorEvent]; got != 1 {
		t.Errorf("error_event faults = %d, want 1", got)
	}
}

func TestMessagesCountTokensAndErrors(t *testing.T) {
	_, ts := startSim(t, Config{APIKey: "k-sim", Models: []string{"claude"}, FailureRate: 0})
	resp, body := postMessages(t, ts.URL, "/v1/messages/count_tokens", "k-sim", cachedSystem+"}")
	if resp.StatusCode != 200 || gjson.GetBytes(body, "input_tokens").Int() != 102 {
		t.Errorf("count_tokens: %d %s, want input_tokens 102", resp.StatusCode, body)
	}
	tests := []struct {
		name, key, body string
		status          int
		typ             string
	}{
		{"wrong key", "nope", cachedSystem + "}", 401, "authentication_error"},
		{"unknown model", "k-sim", strings.Replace(cachedSystem, `"claude"`, `"gpt"`, 1) + "}", 404, "not_found_error"},
		{"no max_tokens", "k-sim", `{"model":"claude","messages":[{"role":"user","content":"x"}]}`, 400, "invalid_request_error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := postMessages(t, ts.URL, "/v1/messages", tc.key, tc.body)
			r := gjson.ParseBytes(body)
			if resp.StatusCode != tc.status || r.Get("type").Str != "error" || r.Get("error.type").Str != tc.typ || r.Get("error.message").Str == "" {
				t.Errorf("status %d, body %s; want %d %s in Anthropic's shape", resp.StatusCode, body, tc.status, tc.typ)
			}
		})
	}
}
