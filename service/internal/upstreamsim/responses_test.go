package upstreamsim

import (
	"net/http"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
)

// sseTypes returns the event types of a Responses stream, checking that
// each event's "event:" line matches its data's type and that sequence
// numbers count up from 0.
func sseTypes(t *testing.T, body []byte) (types []string, events []gjson.Result) {
	t.Helper()
	for i, ev := range strings.Split(strings.TrimSuffix(string(body), "\n\n"), "\n\n") {
		name, data, ok := strings.Cut(ev, "\ndata: ")
		if !ok || !strings.HasPrefix(name, "event: ") || !gjson.Valid(data) {
			t.Fatalf("event %d is not event+data: %q", i, ev)
		}
		d := gjson.Parse(data)
		if d.Get("type").Str != strings.TrimPrefix(name, "event: ") || d.Get("sequence_number").Int() != int64(i) {
			t.Fatalf("event %d: name %q, data type %q, sequence %d", i, name, d.Get("type").Str, d.Get("sequence_number").Int())
		}
		types = append(types, d.Get("type").Str)
		events = append(events, d)
	}
	return types, events
}

func TestResponsesWholeAndStream(t *testing.T) {
	tests := []struct {
		name      string
		cfg       Config
		body      string
		wantTypes string
		status    string
		output    int64 // output_tokens
		reasoning int64
	}{
		{
			name: "plain", cfg: Config{CompletionTokens: 4, TokensPerChunk: 2},
			body: `{"model":"m","input":"hello there"}`,
			wantTypes: "response.created response.in_progress response.output_item.added response.content_part.added " +
				"response.output_text.delta response.output_text.delta response.output_text.done response.content_part.done " +
				"response.output_item.done response.completed",
			status: "completed", output: 4,
		},
		{
			name: "reasoning", cfg: Config{CompletionTokens: 2, TokensPerChunk: 2, ReasoningTokens: 5},
			body: `{"model":"m","input":[{"role":"user","content":"hello"}]}`,
			wantTypes: "response.created response.in_progress response.output_item.added response.output_item.done " +
				"response.output_item.added response.content_part.added response.output_text.delta response.output_text.done " +
				"response.content_part.done response.output_item.done response.completed",
			status: "completed", output: 7, reasoning: 5,
		},
		{
			name: "max_output_tokens", cfg: Config{CompletionTokens: 10, TokensPerChunk: 10, ReasoningTokens: 2},
			body: `{"model":"m","input":"hi","max_output_tokens":5}`,
			wantTypes: "response.created response.in_progress response.output_item.added response.output_item.done " +
				"response.output_item.added response.content_part.added response.output_text.delta response.output_text.done " +
				"response.content_part.done response.output_item.done response.incomplete",
			status: "incomplete", output: 5, reasoning: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ts := startSim(t, tt.cfg)
			resp, whole := post(t, ts, http.MethodPost, "/v1/responses", "", tt.body)
			w := gjson.ParseBytes(whole)
			if resp.StatusCode != 200 || w.Get("object").Str != "response" || w.Get("status").Str != tt.status ||
				w.Get("usage.output_tokens").Int() != tt.output || w.Get("usage.output_tokens_details.reasoning_tokens").Int() != tt.reasoning {
				t.Fatalf("whole: %d %s", resp.StatusCode, whole)
			}
			resp, body := post(t, ts, http.MethodPost, "/v1/responses", "", strings.Replace(tt.body, "{", `{"stream":true,`, 1))
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("stream: %d %s", resp.StatusCode, body)
			}
			types, events := sseTypes(t, body)
			if strings.Join(types, " ") != tt.wantTypes {
				t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(types, " "), tt.wantTypes)
			}
			var text strings.Builder
			for _, ev := range events {
				text.WriteString(ev.Get("delta").Str)
			}
			final := events[len(events)-1].Get("response")
			if text.String() != w.Get("output.#(type==\"message\").content.0.text").Str ||
				final.Get("output.#(type==\"message\").content.0.text").Str != text.String() ||
				final.Get("usage.output_tokens").Int() != tt.output || events[0].Get("response.usage").Type != gjson.Null {
				t.Errorf("deltas %q, whole %s, final %s", text.String(), whole, final.Raw)
			}
		})
	}
}

func TestResponsesStoredAndChained(t *testing.T) {
	sim, ts := startSim(t, Config{CompletionTokens: 3})
	_, first := post(t, ts, http.MethodPost, "/v1/responses", "", `{"model":"m","input":"hello"}`)
	id := gjson.GetBytes(first, "id").Str
	if !strings.HasPrefix(id, "resp_") {
		t.Fatalf("id %q", id)
	}
	// A follow-up carries the earlier turns as cached input.
	_, follow := post(t, ts, http.MethodPost, "/v1/responses", "", `{"model":"m","input":"more","previous_response_id":"`+id+`"}`)
	u := gjson.GetBytes(follow, "usage")
	carried := gjson.GetBytes(first, "usage.total_tokens").Int()
	if gjson.GetBytes(follow, "previous_response_id").Str != id || u.Get("input_tokens_details.cached_tokens").Int() != carried ||
		u.Get("input_tokens").Int() <= carried {
		t.Fatalf("follow-up: %s", follow)
	}
	tests := []struct {
		method, path, body string
		status             int
		check              string // gjson path that must be true or equal the id
	}{
		{http.MethodGet, "/v1/responses/" + id, "", 200, "id"},
		{http.MethodGet, "/v1/responses/" + id + "/input_items", "", 200, `data.0.content.0.text`},
		{http.MethodPost, "/v1/responses", `{"model":"m","input":"x","previous_response_id":"resp_other"}`, 404, ""},
		{http.MethodPost, "/v1/responses/" + id + "/cancel", "", 400, ""}, // not a background response
		{http.MethodPut, "/v1/responses/" + id, "", 405, ""},
		{http.MethodDelete, "/v1/responses/" + id, "", 200, "deleted"},
		{http.MethodGet, "/v1/responses/" + id, "", 404, ""},
		{http.MethodPost, "/v1/responses", `{"model":"m","input":"x","previous_response_id":"` + id + `"}`, 404, ""},
	}
	for _, tt := range tests {
		resp, body := post(t, ts, tt.method, tt.path, "", tt.body)
		if resp.StatusCode != tt.status {
			t.Errorf("%s %s = %d %s, want %d", tt.method, tt.path, resp.StatusCode, body, tt.status)
			continue
		}
		if tt.status >= 400 {
			decodeError(t, body)
			continue
		}
		switch v := gjson.GetBytes(body, tt.check); {
		case tt.check == "id" && v.Str != id, tt.check == "deleted" && !v.Bool(), tt.check == "data.0.content.0.text" && v.Str != "hello":
			t.Errorf("%s %s: %s", tt.method, tt.path, body)
		}
	}

	// store: false keeps nothing; a background response is queued, then
	// cancellable.
	_, eph := post(t, ts, http.MethodPost, "/v1/responses", "", `{"model":"m","input":"x","store":false}`)
	if resp, _ := post(t, ts, http.MethodGet, "/v1/responses/"+gjson.GetBytes(eph, "id").Str, "", ""); resp.StatusCode != 404 {
		t.Errorf("store:false response was stored (%d)", resp.StatusCode)
	}
	_, bg := post(t, ts, http.MethodPost, "/v1/responses", "", `{"model":"m","input":"x","background":true}`)
	if gjson.GetBytes(bg, "status").Str != "queued" {
		t.Fatalf("background: %s", bg)
	}
	_, c := post(t, ts, http.MethodPost, "/v1/responses/"+gjson.GetBytes(bg, "id").Str+"/cancel", "", "")
	if gjson.GetBytes(c, "status").Str != "cancelled" {
		t.Errorf("cancel: %s", c)
	}
	if n := sim.Stats().Requests[EndpointResponses]; n != uint64(len(tests)+6) {
		t.Errorf("responses requests counted %d, want %d", n, len(tests)+6)
	}
}

func TestResponsesFailAfterCreated(t *testing.T) {
	sim, ts := startSim(t, Config{FailAfterCreatedRate: 1})
	_, body := post(t, ts, http.MethodPost, "/v1/responses", "", `{"model":"m","input":"x","stream":true}`)
	types, events := sseTypes(t, body)
	if strings.Join(types, " ") != "response.created response.in_progress response.failed" ||
		events[2].Get("response.error.code").Str != "server_error" || events[2].Get("response.id").Str != events[0].Get("response.id").Str {
		t.Fatalf("events %v: %s", types, body)
	}
	if sim.Stats().Faults[FaultFailedAfterCreated] != 1 {
		t.Errorf("faults = %v", sim.Stats().Faults)
	}
	// The failed response is not kept.
	if resp, _ := post(t, ts, http.MethodGet, "/v1/responses/"+events[0].Get("response.id").Str, "", ""); resp.StatusCode != 404 {
		t.Errorf("failed response retrievable: %d", resp.StatusCode)
	}
}
