package smoketest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func init() {
	// The fake gateway answers at once.
	ledgerPoll = 20 * time.Millisecond
}

const ledgerTestKey = "sk-ledger-test-0123456789"

// fakeLedgerGateway answers chat completions with an X-Request-Id and, on
// GET /v1/generation, the ledger row of a request it answered, once the
// row has been "written" (after writtenAfter lookups).
type fakeLedgerGateway struct {
	disabled     bool   // answer ledger_disabled
	writtenAfter int64  // lookups answered generation_not_found first
	never        bool   // the row never appears
	noRequestID  bool   // answer completions without X-Request-Id
	oldGateway   bool   // no /v1/generation route at all
	rowTokens    [2]int // the row's tokens; zero: what the answer said
	rowModel     string // the row's model; empty: the request's
	rowShape     bool   // answer in the ledger row's shape: its own id, the request's in request_id
	rowID        string // the row's request id; empty: the request's

	lookups atomic.Int64
	lastID  atomic.Value // the request ID of the last completion
}

func (f *fakeLedgerGateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+ledgerTestKey {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":{"message":"invalid API key","type":"invalid_request_error","code":"invalid_api_key"}}`))
		return
	}
	switch {
	case r.URL.Path == "/v1/chat/completions":
		id := fmt.Sprintf("req-%d", time.Now().UnixNano())
		f.lastID.Store(id)
		if !f.noRequestID {
			w.Header().Set("X-Request-Id", id)
		}
		w.Header().Set("X-Relaygate-Upstream", "holysheep")
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"id":"c1","object":"chat.completion","model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","content":"Hello."},"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":3,"total_tokens":24}}`))
	case r.URL.Path == "/v1/generation" && !f.oldGateway:
		n := f.lookups.Add(1)
		id, _ := f.lastID.Load().(string)
		w.Header().Set("Content-Type", "application/json")
		switch {
		case f.disabled:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":{"message":"the gateway runs without a usage ledger","type":"invalid_request_error","code":"ledger_disabled"}}`))
			return
		case r.URL.Query().Get("id") != id || f.never || n <= f.writtenAfter:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":{"message":"no generation with that id","type":"invalid_request_error","code":"generation_not_found"}}`))
			return
		}
		tokens, model := f.rowTokens, f.rowModel
		if tokens == [2]int{} {
			tokens = [2]int{21, 3}
		}
		if model == "" {
			model = "gpt-4.1"
		}
		if f.rowID != "" {
			id = f.rowID
		}
		row := map[string]any{"id": id, "model": model, "upstream": "holysheep", "status": 200,
			"prompt_tokens": tokens[0], "completion_tokens": tokens[1], "cost_usd": 0.000066, "latency_ms": 812.5}
		if f.rowShape {
			row["id"], row["request_id"] = "01JROWID0000000000000000", id
		}
		_ = json.NewEncoder(w).Encode(row)
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"message":"not found","type":"invalid_request_error"}}`))
	}
}

func ledgerRunner(t *testing.T, url string, ledgerEnabled bool) *runner {
	t.Helper()
	r := testRunner(t, Options{
		Outputs:    Outputs{GatewayURL: url, GatewayAPIKey: ledgerTestKey, LedgerEnabled: ledgerEnabled},
		LedgerWait: 2 * time.Second, StepTimeout: 10 * time.Second,
	})
	r.model, r.authOK = "gpt-4.1", true
	return r
}

// TestCheckLedger runs the completion check and then the ledger check
// against a fake gateway: the completion's row found with its model and
// tokens passes; a gateway without a ledger is a skip on a stack without
// one and a failure on a stack with one; a row that never comes, or that
// disagrees with the answer, fails with what to look at.
func TestCheckLedger(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		gw            *fakeLedgerGateway
		ledgerEnabled bool
		status        Status
		detail, hint  string
		minLookups    int64
	}{
		{"found after a few batches", &fakeLedgerGateway{writtenAfter: 3}, true, Pass,
			"in the ledger after", "", 4},
		{"found, in the ledger row's shape", &fakeLedgerGateway{rowShape: true}, true, Pass,
			"in the ledger after", "", 1},
		{"another request's row", &fakeLedgerGateway{rowID: "someone-else"}, true, Fail,
			`id "someone-else", not "req-`, "bug in the gateway's ledger", 1},
		{"no ledger on a stack without one", &fakeLedgerGateway{disabled: true}, false, NotApplicable,
			"the gateway has no usage ledger (ledger_disabled)", "", 1},
		{"no ledger on a stack with one", &fakeLedgerGateway{disabled: true}, true, Fail,
			"answers ledger_disabled", "LEDGER_POSTGRES_URL", 1},
		{"the row never comes", &fakeLedgerGateway{never: true}, true, Fail,
			"is not in the ledger 2s after its answer (generation_not_found)", "docker logs relaygate-ledger-db", 2},
		{"tokens disagree", &fakeLedgerGateway{rowTokens: [2]int{21, 4}}, true, Fail,
			"21+4 tokens, but the answer reported 21+3", "bug in the gateway's ledger", 1},
		{"model disagrees", &fakeLedgerGateway{rowModel: "gpt-4.1-mini"}, true, Fail,
			`model "gpt-4.1-mini", not "gpt-4.1"`, "bug in the gateway's ledger", 1},
		{"no request id", &fakeLedgerGateway{noRequestID: true}, true, Fail,
			"no X-Request-Id header", "strip the header", 0},
		{"a gateway older than the ledger", &fakeLedgerGateway{oldGateway: true}, true, Fail,
			"HTTP 404 without a ledger error code", "predates the ledger", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(tt.gw)
			t.Cleanup(srv.Close)
			r := ledgerRunner(t, srv.URL, tt.ledgerEnabled)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			var c Step
			r.checkCompletion(ctx, &c)
			if c.Status != Pass || r.ledgerProbe == nil {
				t.Fatalf("completion = %+v", c)
			}
			var s Step
			r.checkLedger(ctx, &s)
			if s.Status != tt.status {
				t.Fatalf("status %s, want %s: %s (hint: %s)", s.Status, tt.status, s.Detail, s.Hint)
			}
			if !strings.Contains(s.Detail, tt.detail) {
				t.Errorf("detail lacks %q: %s", tt.detail, s.Detail)
			}
			if !strings.Contains(s.Hint, tt.hint) {
				t.Errorf("hint lacks %q: %s", tt.hint, s.Hint)
			}
			if n := tt.gw.lookups.Load(); n < tt.minLookups {
				t.Errorf("%d lookups, want at least %d", n, tt.minLookups)
			}
			if tt.status == Pass {
				id, _ := tt.gw.lastID.Load().(string)
				for _, want := range []string{"request " + id, "gpt-4.1 via holysheep, status 200, 21+3 tokens, $0.000066"} {
					if !strings.Contains(s.Detail, want) {
						t.Errorf("detail lacks %q: %s", want, s.Detail)
					}
				}
			}
		})
	}
}

// TestRunSkipsTheLedgerWithoutACompletion: with no answered completion
// there is nothing to look up; the check says so instead of failing.
func TestRunSkipsTheLedgerWithoutACompletion(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	rep := Run(t.Context(), Options{
		Outputs:     Outputs{GatewayURL: srv.URL, GatewayAPIKey: ledgerTestKey, LatencyBudgetP95Ms: 1000, LedgerEnabled: true},
		Requests:    1,
		StepTimeout: 5 * time.Second,
	})
	st := rep.Step(CheckLedger)
	if st == nil || st.Status != Skip || !strings.Contains(st.Detail, "needs a key the gateway accepts") {
		t.Fatalf("ledger check = %+v, want a skip", st)
	}
}
