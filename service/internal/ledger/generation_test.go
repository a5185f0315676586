package ledger_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// TestGenerationLookup: GET /v1/generation?id= answers a request's ledger
// row (tokens and cost as the answer reported them) to the key that made
// it, and to no other; unknown ids and a gateway without a ledger answer
// their own codes.
func TestGenerationLookup(t *testing.T) {
	pg := testenv.StartPostgres(t)
	const named = "sk-ledger-named-key-0123456789abcdef"
	sim := httptest.NewServer(upstreamsim.New(upstreamsim.Config{CompletionTokens: 8}))
	t.Cleanup(sim.Close)
	open := func(ledger string) *httptest.Server {
		keys := fmt.Sprintf("teams: [{name: search}]\nkeys: [{name: alice, team: search, key: %q}]\n", named)
		return serveApp(t, newApp(t, appDoc(sim.URL, keys+ledger)))
	}
	gw := open(fmt.Sprintf("ledger: {postgres_url: %q, spill_dir: %q, batch_interval: 20ms}\n", pg.URL, t.TempDir()))

	type usage struct{ PromptTokens, CompletionTokens int64 }
	chat := func(key string) (id string, u usage) {
		t.Helper()
		req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", bytes.NewReader([]byte(`{"model":"m","messages":[{"role":"user","content":"what did this cost"}]}`)))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Usage struct {
				PromptTokens     int64 `json:"prompt_tokens"`
				CompletionTokens int64 `json:"completion_tokens"`
			} `json:"usage"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 200 {
			t.Fatalf("completion: %d %v", resp.StatusCode, err)
		}
		return resp.Header.Get("X-Request-Id"), usage{body.Usage.PromptTokens, body.Usage.CompletionTokens}
	}
	type answer struct {
		status int
		code   string
		gen    map[string]any
	}
	lookup := func(srv *httptest.Server, key, id string) answer {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+"/v1/generation?id="+id, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var doc map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&doc)
		a := answer{status: resp.StatusCode, gen: doc}
		if e, ok := doc["error"].(map[string]any); ok {
			a.code, _ = e["code"].(string)
		}
		return a
	}
	found := func(key, id string) answer {
		t.Helper()
		var a answer
		testenv.WaitFor(t, 15*time.Second, "the request's ledger row", func() bool {
			a = lookup(gw, key, id)
			return a.status != http.StatusNotFound && a.status != http.StatusServiceUnavailable // not written yet; the schema may still be migrating
		})
		return a
	}

	plainID, plainUsage := chat(clientKey)
	namedID, _ := chat(named)

	a := found(clientKey, plainID)
	g := a.gen
	wantCost := (float64(plainUsage.PromptTokens)*1 + float64(plainUsage.CompletionTokens)*2) / 1e6
	if a.status != 200 || g["id"] != plainID || g["model"] != "m" || g["upstream"] != "sim" || g["status"] != float64(200) ||
		g["prompt_tokens"] != float64(plainUsage.PromptTokens) || g["completion_tokens"] != float64(plainUsage.CompletionTokens) ||
		math.Abs(g["cost_usd"].(float64)-wantCost) > 1e-12 {
		t.Errorf("plain key's own request: %d %v; want tokens %+v, cost %v", a.status, g, plainUsage, wantCost)
	}
	if a := found(named, namedID); a.status != 200 || a.gen["key"] != "alice" || a.gen["team"] != "search" {
		t.Errorf("named key's own request: %d %v", a.status, a.gen)
	}
	for _, c := range []struct {
		name, key, id, code string
		status              int
	}{
		{"another key's request", clientKey, namedID, "generation_not_found", 404},
		{"a plain key's request read by a named key", named, plainID, "generation_not_found", 404},
		{"unknown id", clientKey, "no-such-request", "generation_not_found", 404},
		{"no id", clientKey, "", "invalid_id", 400},
		{"wrong key", "sk-not-a-key-0123456789", plainID, "invalid_api_key", 401},
	} {
		if a := lookup(gw, c.key, c.id); a.status != c.status || a.code != c.code {
			t.Errorf("%s: %d %q, want %d %q", c.name, a.status, a.code, c.status, c.code)
		}
	}
	// Another client (and a stranger without a valid key) reusing the
	// named key's X-Request-Id hides nothing: the key still finds its own.
	for _, key := range []string{clientKey, "sk-not-a-key-0123456789"} {
		req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", bytes.NewReader([]byte(`{"model":"m","messages":[{"role":"user","content":"same id"}]}`)))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("X-Request-Id", namedID)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	time.Sleep(200 * time.Millisecond) // past a batch: the reused ids' rows are in
	if a := lookup(gw, named, namedID); a.status != 200 || a.gen["key"] != "alice" || a.gen["prompt_tokens"] == float64(0) {
		t.Errorf("named key's request after its id was reused: %d %v", a.status, a.gen)
	}
	if a := lookup(open(""), clientKey, plainID); a.status != 404 || a.code != "ledger_disabled" {
		t.Errorf("gateway without a ledger: %d %q, want 404 ledger_disabled", a.status, a.code)
	}
}
