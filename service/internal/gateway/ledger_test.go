package gateway

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/relaygate/relaygate/service/internal/ledger"
)

// rowRecorder keeps the rows the gateway writes, as the ledger would take
// them.
type rowRecorder struct {
	mu   sync.Mutex
	rows []ledger.Row
}

func (r *rowRecorder) Write(row ledger.Row) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rows = append(r.rows, row)
}

func (r *rowRecorder) all() []ledger.Row {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ledger.Row(nil), r.rows...)
}

// TestLedgerRows: every request the proxy sees becomes one row, refusals
// included, with the cost and savings the metrics count, the fallback
// path, and nothing of the key or the prompt.
func TestLedgerRows(t *testing.T) {
	failing := newFakeUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		http.Error(w, `{"error":{"message":"overloaded"}}`, http.StatusServiceUnavailable)
	})
	ok := newFakeUpstream(t, okCompletion)
	srv, gw, _ := newGateway(t, gwOpts{attempts: 1}, failing, ok)
	rec := &rowRecorder{}
	gw.ledger = rec

	post := func(key, body string) *http.Response {
		req, _ := http.NewRequest("POST", srv.URL+"/v1/chat/completions", strings.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	answered := post(testClientKey, chatBody)
	refused := post("", chatBody)
	unknown := post(testClientKey, `{"model":"nope","messages":[{"role":"user","content":"secret prompt"}]}`)

	rows := rec.all()
	if len(rows) != 3 {
		t.Fatalf("%d rows for 3 requests", len(rows))
	}
	byID := map[string]ledger.Row{}
	for _, r := range rows {
		byID[r.RequestID] = r
		if r.ID == "" || len(r.ID) != 32 || r.Time.IsZero() || r.Latency <= 0 {
			t.Errorf("row %+v: want an id, a time and a latency", r)
		}
		if strings.Contains(r.Model+r.Upstream+r.KeyName+r.Team+strings.Join(r.FallbackPath, ""), "secret") {
			t.Errorf("row %+v holds the prompt", r)
		}
	}
	a := byID[answered.Header.Get("X-Request-Id")]
	// 10 prompt and 2 completion tokens at 1 and 2 $/MTok, reference 3
	// and 6.
	wantCost, wantRef := (10*1+2*2)/1e6, (10*3+2*6)/1e6
	if a.Status != 200 || a.Model != "m" || a.Upstream != "b" || a.API != "chat" || !a.UsageKnown ||
		a.PromptTokens != 10 || a.CompletionTokens != 2 || !nearUSD(a.CostUSD, wantCost) || !nearUSD(a.SavingsUSD, wantRef-wantCost) {
		t.Errorf("answered row = %+v", a)
	}
	if strings.Join(a.FallbackPath, ",") != "a,b" || a.Attempts != 2 {
		t.Errorf("answered row's path %v, attempts %d: want a,b and 2", a.FallbackPath, a.Attempts)
	}
	r := byID[refused.Header.Get("X-Request-Id")]
	if r.Status != 401 || r.Upstream != "none" || r.CostUSD != 0 || r.FallbackPath != nil || r.UsageKnown {
		t.Errorf("refused row = %+v", r)
	}
	u := byID[unknown.Header.Get("X-Request-Id")]
	if u.Status != 404 || u.Model != "unknown" {
		t.Errorf("unknown-model row = %+v", u)
	}
}

func nearUSD(a, b float64) bool { d := a - b; return d < 1e-12 && d > -1e-12 }
