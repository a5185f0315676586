package gateway

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

func TestParseResponsesRequest(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		code      string // expected error code; empty: accepted
		prev      string
		noStore   bool
		maxTokens int64
		stream    bool
	}{
		{name: "plain", body: `{"model":"m","input":"hi"}`},
		{name: "no input", body: `{"model":"m","previous_response_id":"resp_1","instructions":"go on"}`, prev: "resp_1"},
		{name: "all read keys", body: `{"model":"m","input":[],"store":false,"max_output_tokens":300,"stream":true,"previous_response_id":null}`,
			noStore: true, maxTokens: 300, stream: true},
		{name: "previous id not a string", body: `{"model":"m","previous_response_id":7}`, code: "invalid_type"},
		{name: "previous id with a slash", body: `{"model":"m","previous_response_id":"resp_1/../x"}`, code: "invalid_previous_response_id"},
		{name: "store not a boolean", body: `{"model":"m","store":"no"}`, code: "invalid_type"},
		{name: "store twice", body: `{"model":"m","store":true,"store":false}`, code: "duplicate_key"},
		{name: "Store in another case", body: `{"model":"m","Store":false}`, code: "invalid_key_case"},
		{name: "previous id twice", body: `{"model":"m","previous_response_id":"resp_a","previous_response_id":"resp_b"}`, code: "duplicate_key"},
		{name: "max_output_tokens in another case", body: `{"model":"m","Max_Output_Tokens":1}`, code: "invalid_key_case"},
		{name: "no model", body: `{"input":"hi"}`, code: "missing_model"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, e := parseRequest([]byte(tt.body), epResponses)
			switch {
			case tt.code != "":
				if e == nil || e.Code != tt.code || e.Status != http.StatusBadRequest {
					t.Fatalf("error = %+v, want code %s", e, tt.code)
				}
			case e != nil:
				t.Fatalf("refused: %+v", e)
			case req.previousID != tt.prev || req.noStore != tt.noStore || req.maxTokens != tt.maxTokens || req.stream != tt.stream:
				t.Fatalf("read %+v", req)
			}
		})
	}
	// On chat, store and previous_response_id are the upstream's business.
	if _, e := parseRequest([]byte(`{"model":"m","messages":[{"role":"user","content":"x"}],"store":"yes","previous_response_id":1}`), epChat); e != nil {
		t.Errorf("chat refused: %+v", e)
	}
}

func TestResponsesByIDErrors(t *testing.T) {
	_, up := responsesSim(t, "upstream-key-a", upstreamsim.Config{})
	gwSrv, _, _ := newGateway(t, gwOpts{}, up)
	tests := []struct {
		method, path, key string
		status            int
		code              string
	}{
		{http.MethodGet, "/v1/responses/resp_nobody", testClientKey, 404, "response_not_found"},
		{http.MethodGet, "/v1/responses/resp_nobody/input_items", testClientKey, 404, "response_not_found"},
		{http.MethodPost, "/v1/responses/resp_nobody/cancel", testClientKey, 404, "response_not_found"},
		{http.MethodGet, "/v1/responses/" + strings.Repeat("x", 200), testClientKey, 404, "response_not_found"},
		{http.MethodGet, "/v1/responses/resp_1/other", testClientKey, 404, "unknown_url"},
		{http.MethodPost, "/v1/responses/resp_1", testClientKey, 405, "method_not_allowed"},
		{http.MethodGet, "/v1/responses/resp_1/cancel", testClientKey, 405, "method_not_allowed"},
		{http.MethodGet, "/v1/responses/resp_1", "", 401, "invalid_api_key"},
	}
	for _, tt := range tests {
		var hdr []string
		if tt.key != "" {
			hdr = []string{"Authorization", "Bearer " + tt.key}
		}
		r := do(t, tt.method, gwSrv.URL+tt.path, nil, hdr...)
		status, body := r.status, r.body
		if status != tt.status {
			t.Errorf("%s %s = %d %s, want %d", tt.method, tt.path, status, body, tt.status)
			continue
		}
		if _, _, code := openAIError(t, body); code != tt.code {
			t.Errorf("%s %s: code %s, want %s", tt.method, tt.path, code, tt.code)
		}
	}
}

// TestResponsesUsageBound: output_tokens beyond max_output_tokens (and its
// slack) are not believed, as for chat's max_tokens.
func TestResponsesUsageBound(t *testing.T) {
	up := newFakeUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"resp_big","object":"response","status":"completed","output":[],"usage":{"input_tokens":3,"output_tokens":100000,"output_tokens_details":{"reasoning_tokens":0}}}`)
	})
	gwSrv, _, m := newGateway(t, gwOpts{}, up)
	r := post(t, gwSrv.URL, "/v1/responses", `{"model":"m","input":"hi","max_output_tokens":10}`)
	if r.status != 200 || r.header.Get("X-Cache") != "BYPASS" {
		t.Fatalf("status %d, X-Cache %q", r.status, r.header.Get("X-Cache"))
	}
	waitMetric(t, m, "relaygate_usage_suspicious_total", map[string]string{"model": "m"}, 1)
	if got := metricValue(t, m, "relaygate_tokens_total", map[string]string{"model": "m", "api": "responses", "kind": "completion"}); got != 0 {
		t.Errorf("counted %v completion tokens of unbelievable usage", got)
	}
}

// TestScanHeld: which events hold a Responses stream back, which commit it
// and which fail it before its commit point.
func TestScanHeld(t *testing.T) {
	ev := func(data string) string { return "event: x\ndata: " + data + "\n\n" }
	created := ev(`{"type":"response.created","sequence_number":0,"response":{"id":"resp_abc","status":"in_progress"}}`)
	tests := []struct {
		name    string
		events  string
		verdict heldVerdict
		msg     string
	}{
		{"lifecycle only", created + ev(`{"type":"response.in_progress"}`) +
			ev(`{"type":"response.output_item.added","item":{"type":"message"}}`) + ": keep-alive\n\n" +
			ev(`{"type":"response.content_part.added"}`) + ev(`{"type":"response.output_item.added","item":{"type":"reasoning"}}`), holdEvents, ""},
		{"text delta", created + ev(`{"type":"response.output_text.delta","delta":"hi"}`), commitEvents, ""},
		{"arguments delta", created + ev(`{"type":"response.function_call_arguments.delta","delta":"{"}`), commitEvents, ""},
		{"tool call item", created + ev(`{"type":"response.output_item.added","item":{"type":"function_call","name":"f"}}`), commitEvents, ""},
		{"empty answer completes", created + ev(`{"type":"response.completed","response":{}}`), commitEvents, ""},
		{"failed", created + ev(`{"type":"response.failed","response":{"error":{"code":"server_error","message":"boom"}}}`), failEvents, "boom"},
		{"error event", created + ev(`{"type":"error","code":"rate_limit_exceeded","message":"slow down"}`), failEvents, "slow down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := &exchange{}
			id := ""
			verdict, msg := x.scanHeld([]byte(tt.events), &id)
			if verdict != tt.verdict || msg != tt.msg || id != "resp_abc" {
				t.Errorf("scanHeld = %v %q (created %q), want %v %q", verdict, msg, id, tt.verdict, tt.msg)
			}
		})
	}
}
