package upstreamsim

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
)

func TestRequestErrors(t *testing.T) {
	const key = "sk-sim-test-key"
	tests := []struct {
		name       string
		cfg        Config
		method     string
		path, key  string
		body       string
		wantStatus int
		wantCode   string
		reject     string // Stats.Rejected key expected to be 1
	}{
		{name: "malformed JSON", body: `{"model":`, wantStatus: 400, reject: RejectBadRequest},
		{name: "not an object", body: `["model"]`, wantStatus: 400, reject: RejectBadRequest},
		{name: "missing model", body: `{"messages":[{"role":"user","content":"x"}]}`, wantStatus: 400, reject: RejectBadRequest},
		{name: "model not a string", body: `{"model":7,"messages":[{"role":"user","content":"x"}]}`, wantStatus: 400, reject: RejectBadRequest},
		{name: "missing messages", body: `{"model":"m"}`, wantStatus: 400, reject: RejectBadRequest},
		{name: "empty messages", body: `{"model":"m","messages":[]}`, wantStatus: 400, reject: RejectBadRequest},
		{name: "bad max_tokens", body: `{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}`, wantStatus: 400, reject: RejectBadRequest},
		{name: "fractional max_tokens", body: `{"model":"m","max_tokens":1.5,"messages":[{"role":"user","content":"x"}]}`, wantStatus: 400, reject: RejectBadRequest},
		{
			name: "unknown model", cfg: Config{Models: []string{"a", "b"}},
			body: `{"model":"c","messages":[{"role":"user","content":"x"}]}`, wantStatus: 404, wantCode: "model_not_found", reject: RejectModelNotFound,
		},
		{
			name: "unknown embedding model", cfg: Config{Models: []string{"a"}}, path: "/v1/embeddings",
			body: `{"model":"c","input":"x"}`, wantStatus: 404, wantCode: "model_not_found", reject: RejectModelNotFound,
		},
		{
			name: "missing key", cfg: Config{APIKey: key},
			body: chatBody, wantStatus: 401, wantCode: "invalid_api_key", reject: RejectUnauthorized,
		},
		{
			name: "wrong key", cfg: Config{APIKey: key}, key: "sk-other",
			body: chatBody, wantStatus: 401, wantCode: "invalid_api_key", reject: RejectUnauthorized,
		},
		{
			name: "key checked before body", cfg: Config{APIKey: key}, key: "nope",
			body: `{"model":`, wantStatus: 401, wantCode: "invalid_api_key", reject: RejectUnauthorized,
		},
		{
			name: "models need the key too", cfg: Config{APIKey: key}, method: http.MethodGet, path: "/v1/models",
			wantStatus: 401, wantCode: "invalid_api_key", reject: RejectUnauthorized,
		},
		{name: "GET on chat", method: http.MethodGet, wantStatus: 405, reject: RejectMethodNotAllowed},
		{name: "POST on models", method: http.MethodPost, path: "/v1/models", wantStatus: 405, reject: RejectMethodNotAllowed},
		{name: "unknown path", path: "/v1/completions/legacy", wantStatus: 404},
		{name: "embeddings without input", path: "/v1/embeddings", body: `{"model":"e"}`, wantStatus: 400, reject: RejectBadRequest},
		{name: "embeddings with empty input", path: "/v1/embeddings", body: `{"model":"e","input":[]}`, wantStatus: 400, reject: RejectBadRequest},
		{name: "embeddings with bad item", path: "/v1/embeddings", body: `{"model":"e","input":["a",{}]}`, wantStatus: 400, reject: RejectBadRequest},
		{name: "embeddings with bad format", path: "/v1/embeddings", body: `{"model":"e","input":"a","encoding_format":"hex"}`, wantStatus: 400, reject: RejectBadRequest},
		{name: "embeddings with bad dimensions", path: "/v1/embeddings", body: `{"model":"e","input":"a","dimensions":-1}`, wantStatus: 400, reject: RejectBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Faults at full rate prove that rejected requests never reach
			// them, as at a provider that refuses before doing any work.
			tc.cfg.FailureRate, tc.cfg.ResetRate = 1, 1
			sim, ts := startSim(t, tc.cfg)
			method, path := tc.method, tc.path
			if method == "" {
				method = http.MethodPost
			}
			if path == "" {
				path = "/v1/chat/completions"
			}
			resp, body := post(t, ts, method, path, tc.key, tc.body)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.wantStatus, body)
			}
			if _, code := decodeError(t, body); code != tc.wantCode {
				t.Errorf("code = %q, want %q", code, tc.wantCode)
			}
			if strings.Contains(string(body), key) || (tc.key != "" && strings.Contains(string(body), tc.key)) {
				t.Errorf("error body echoes a key: %s", body)
			}
			st := sim.Stats()
			for reason, n := range st.Rejected {
				want := uint64(0)
				if reason == tc.reject {
					want = 1
				}
				if n != want {
					t.Errorf("rejected[%s] = %d, want %d", reason, n, want)
				}
			}
			if st.Faults[FaultFailure]+st.Faults[FaultReset] != 0 {
				t.Errorf("a rejected request reached fault injection: %v", st.Faults)
			}
		})
	}
}

func TestAPIKeyAccepted(t *testing.T) {
	const key = "sk-sim-right"
	tests := []struct {
		name, header string
		want         int
	}{
		{"bearer", "Bearer " + key, http.StatusOK},
		{"scheme is case-insensitive", "bearer " + key, http.StatusOK},
		{"key without scheme", key, http.StatusUnauthorized},
		{"key with suffix", "Bearer " + key + "x", http.StatusUnauthorized},
		{"basic scheme", "Basic " + key, http.StatusUnauthorized},
	}
	_, ts := startSim(t, Config{APIKey: key})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(testContext(t), http.MethodPost, ts.URL+"/v1/chat/completions", strings.NewReader(chatBody))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", tc.header)
			resp, err := ts.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}

	t.Run("OpenAI client", func(t *testing.T) {
		ctx := testContext(t)
		if _, err := newClient(ts, key).CreateChatCompletion(ctx, chatRequestFor("m", "hi")); err != nil {
			t.Errorf("right key: %v", err)
		}
		_, err := newClient(ts, "wrong").CreateChatCompletion(ctx, chatRequestFor("m", "hi"))
		var apiErr *openai.APIError
		if !errors.As(err, &apiErr) || apiErr.HTTPStatusCode != http.StatusUnauthorized || apiErr.Code != "invalid_api_key" {
			t.Errorf("wrong key: err = %v, want 401 invalid_api_key", err)
		}
	})
}

func TestModels(t *testing.T) {
	tests := []struct {
		name   string
		models []string
	}{
		{"configured", []string{"gpt-4.1", "gpt-4.1-mini", "text-embedding-3-small"}},
		{"none configured", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim, ts := startSim(t, Config{Models: tc.models, APIKey: "k"})
			list, err := newClient(ts, "k").ListModels(testContext(t))
			if err != nil {
				t.Fatalf("ListModels: %v", err)
			}
			var ids []string
			for _, m := range list.Models {
				if m.Object != "model" || m.OwnedBy == "" || m.CreatedAt == 0 {
					t.Errorf("model entry = %+v", m)
				}
				ids = append(ids, m.ID)
			}
			if !reflect.DeepEqual(ids, tc.models) {
				t.Errorf("ids = %v, want %v", ids, tc.models)
			}
			if got := sim.Stats().Requests[EndpointModels]; got != 1 {
				t.Errorf("models requests = %d, want 1", got)
			}
		})
	}

	t.Run("shape and unprefixed path", func(t *testing.T) {
		_, ts := startSim(t, Config{Models: []string{`quote"d`}})
		_, body := requestOK(t, ts, http.MethodGet, "/models", "")
		var got struct {
			Object string `json:"object"`
			Data   []struct {
				ID string `json:"id"`
			} `json:"data"`
		}
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		if got.Object != "list" || len(got.Data) != 1 || got.Data[0].ID != `quote"d` {
			t.Errorf("body = %s", body)
		}
	})
}

func TestSimEndpoints(t *testing.T) {
	// /sim/ answers without the key: it is the test harness's door, and the
	// harness holds no provider key.
	sim, ts := startSim(t, Config{APIKey: "k", FailureRate: 1})
	post(t, ts, http.MethodPost, "/v1/chat/completions", "k", chatBody)
	post(t, ts, http.MethodPost, "/v1/chat/completions", "bad", chatBody)
	post(t, ts, http.MethodGet, "/nowhere", "", "")

	resp, body := post(t, ts, http.MethodGet, "/sim/stats", "", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stats status %d: %s", resp.StatusCode, body)
	}
	var got Stats
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("stats body: %v: %s", err, body)
	}
	want := Stats{
		Requests: map[string]uint64{EndpointChatCompletions: 2, EndpointEmbeddings: 0, EndpointModels: 0, EndpointOther: 1,
			EndpointMessages: 0, EndpointCountTokens: 0, EndpointResponses: 0, EndpointCompletions: 0, EndpointModerations: 0,
			EndpointImages: 0, EndpointSpeech: 0, EndpointTranscriptions: 0},
		Rejected: map[string]uint64{
			RejectBadRequest: 0, RejectUnauthorized: 1, RejectModelNotFound: 0, RejectMethodNotAllowed: 0, RejectTooLarge: 0,
		},
		Faults: map[string]uint64{FaultFailure: 1, FaultHang: 0, FaultReset: 0, FaultCut: 0, FaultErrorEvent: 0, FaultFailedAfterCreated: 0},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stats = %+v\nwant    %+v", got, want)
	}
	if !reflect.DeepEqual(sim.Stats(), want) {
		t.Errorf("Stats() = %+v, want the same as /sim/stats", sim.Stats())
	}

	if resp, body := post(t, ts, http.MethodGet, "/sim/reset", "", ""); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /sim/reset: status %d: %s", resp.StatusCode, body)
	}
	if resp, body := post(t, ts, http.MethodPost, "/sim/reset", "", ""); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("POST /sim/reset: status %d: %s", resp.StatusCode, body)
	}
	st := sim.Stats()
	for _, m := range []map[string]uint64{st.Requests, st.Rejected, st.Faults} {
		for k, v := range m {
			if v != 0 {
				t.Errorf("after reset %s = %d", k, v)
			}
		}
	}
}

// TestRequestTooLarge announces a body over the limit with
// "Expect: 100-continue" on a raw connection: the server must refuse it from
// the headers, so the test never uploads the body.
func TestRequestTooLarge(t *testing.T) {
	sim, ts := startSim(t, Config{})
	var d net.Dialer
	conn, err := d.DialContext(testContext(t), "tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(testTimeout)); err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", maxBodyBytes+1)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	decodeError(t, body)
	if got := sim.Stats().Rejected[RejectTooLarge]; got != 1 {
		t.Errorf("too_large = %d, want 1", got)
	}
}

// TestKeepAlive checks that answers of every kind leave the connection
// reusable: benchmarks through the gateway would otherwise measure TCP
// handshakes rather than the gateway.
func TestKeepAlive(t *testing.T) {
	sim := New(Config{APIKey: "k"})
	ts := httptest.NewUnstartedServer(sim)
	var newConns atomic.Int64
	ts.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			newConns.Add(1)
		}
	}
	ts.Start()
	t.Cleanup(ts.Close)

	stream := `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	requests := []struct {
		name, method, path, key, body string
		failing                       bool
	}{
		{name: "chat", method: http.MethodPost, path: "/v1/chat/completions", key: "k", body: chatBody},
		{name: "stream", method: http.MethodPost, path: "/v1/chat/completions", key: "k", body: stream},
		{name: "embeddings", method: http.MethodPost, path: "/v1/embeddings", key: "k", body: `{"model":"e","input":"x"}`},
		{name: "models", method: http.MethodGet, path: "/v1/models", key: "k"},
		{name: "unauthorized, body unread", method: http.MethodPost, path: "/v1/chat/completions", key: "bad", body: chatBody},
		{name: "bad request", method: http.MethodPost, path: "/v1/chat/completions", key: "k", body: `{`},
		{name: "injected failure", method: http.MethodPost, path: "/v1/chat/completions", key: "k", body: chatBody, failing: true},
		{name: "stats", method: http.MethodGet, path: "/sim/stats"},
	}
	for _, rq := range requests {
		cfg := Config{APIKey: "k"}
		if rq.failing {
			cfg.FailureRate = 1
		}
		sim.SetConfig(cfg)
		post(t, ts, rq.method, rq.path, rq.key, rq.body)
		if n := newConns.Load(); n != 1 {
			t.Fatalf("after %s: %d connections opened, want 1 reused", rq.name, n)
		}
	}
}
