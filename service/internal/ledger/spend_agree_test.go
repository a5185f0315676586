package ledger_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/ledger"
	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// TestSpendAgreesEverywhere: after a run of mixed traffic from two named
// keys of one team (whole and streamed chat, Messages with prompt-cache
// writes and reads, a chat model dearer than another), what each key and
// the team spent is the same to the cent in the three places that say it:
// the ledger in Postgres, Prometheus (relaygate_spend_usd_total) and
// /admin/spend (Redis). Prices are high, so that the run spends dollars
// and a cent is a real difference.
func TestSpendAgreesEverywhere(t *testing.T) {
	pg := testenv.StartPostgres(t)
	rds := testenv.StartRedis(t)
	sim := httptest.NewServer(upstreamsim.New(upstreamsim.Config{CompletionTokens: 13, TokensPerChunk: 3}))
	t.Cleanup(sim.Close)
	const adminKey = "sk-admin-key-0123456789abcdef"
	keys := map[string]string{"k1": "sk-spend-key-one-0123456789", "k2": "sk-spend-key-two-0123456789"}
	doc := fmt.Sprintf(`listen: "127.0.0.1:0"
admin: {key: %q}
teams: [{name: t, budget: {usd: 1000, period: month}}]
keys:
  - {name: k1, team: t, key: %q, budget: {usd: 500, period: day}}
  - {name: k2, team: t, key: %q, rpm: 100000}
upstreams:
  - {name: sim, base_url: %q, apis: [chat, messages]}
models:
  - name: cheap
    route: [sim]
    price: {input_per_mtok: 370, output_per_mtok: 1130}
  - name: dear
    route: [sim]
    price: {input_per_mtok: 3300, output_per_mtok: 15700, cache_write_per_mtok: 4100, cache_read_per_mtok: 330}
cache: {redis_url: %q}
gpu: {interval: 1h}
log: {requests: false}
ledger: {postgres_url: %q, spill_dir: %q, batch_interval: 20ms}
`, adminKey, keys["k1"], keys["k2"], sim.URL+"/v1", rds.URL, pg.URL, t.TempDir())
	a := newApp(t, doc)
	gw := serveApp(t, a)

	bodies := []struct{ path, body string }{
		{"/v1/chat/completions", `{"model":"cheap","messages":[{"role":"user","content":"a short question %d"}]}`},
		{"/v1/chat/completions", `{"model":"dear","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"stream this answer %d"}]}`},
		{"/v1/messages", `{"model":"dear","max_tokens":64,"system":[{"type":"text","text":"` + string(bytes.Repeat([]byte("a long cached system prompt "), 120)) + `","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"question %d"}]}`},
	}
	const perKey = 30
	var wg sync.WaitGroup
	errs := make(chan error, 2*perKey)
	for name, key := range keys {
		wg.Go(func() {
			for i := range perKey {
				b := bodies[i%len(bodies)]
				req, _ := http.NewRequest("POST", gw.URL+b.path, bytes.NewReader([]byte(fmt.Sprintf(b.body, i))))
				req.Header.Set("Authorization", "Bearer "+key)
				req.Header.Set("Content-Type", "application/json")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					errs <- fmt.Errorf("%s request %d: %w", name, i, err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("%s request %d (%s): HTTP %d", name, i, b.path, resp.StatusCode)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// The ledger has every row once its batches are in.
	spend := func(key string) ledger.Spend {
		s, err := a.Ledger.Spend(context.Background(), ledger.SpendFilter{Team: "t", Key: key})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	testenv.WaitFor(t, 30*time.Second, "every request's ledger row", func() bool {
		// An error is the schema not migrated yet: the first batch does it.
		s, err := a.Ledger.Spend(context.Background(), ledger.SpendFilter{Team: "t"})
		return err == nil && s.Requests == 2*perKey
	})

	req, _ := http.NewRequest("GET", gw.URL+"/admin/spend?team=t", nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var admin struct {
		Scopes []struct {
			Scope, Name string
			SpendUSD    float64 `json:"spend_usd"`
		} `json:"scopes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&admin); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/admin/spend: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	fromAdmin := map[string]float64{}
	for _, s := range admin.Scopes {
		fromAdmin[s.Scope+"/"+s.Name] = s.SpendUSD
	}

	cents := func(v float64) string { return fmt.Sprintf("%.2f", v) }
	var teamProm float64
	for name := range keys {
		led := spend(name).CostUSD
		prom := testenv.MetricValue(t, a.Metrics.Registry, "relaygate_spend_usd_total", map[string]string{"team": "t", "key": name})
		teamProm += prom
		red := fromAdmin["key/"+name]
		t.Logf("%s: ledger $%.6f, Prometheus $%.6f, /admin/spend $%.6f", name, led, prom, red)
		if led == 0 || cents(led) != cents(prom) || cents(led) != cents(red) {
			t.Errorf("%s spent $%.6f in the ledger, $%.6f in Prometheus, $%.6f in /admin/spend", name, led, prom, red)
		}
		// Beyond cents: Redis rounds each request to a micro-dollar.
		if math.Abs(led-prom) > 1e-9 || math.Abs(led-red) > float64(perKey)*1e-6 {
			t.Errorf("%s: ledger and Prometheus differ by %g, ledger and Redis by %g", name, led-prom, led-red)
		}
	}
	if team := spend("").CostUSD; cents(team) != cents(teamProm) || cents(team) != cents(fromAdmin["team/t"]) {
		t.Errorf("team t spent $%.6f in the ledger, $%.6f in Prometheus, $%.6f in /admin/spend", team, teamProm, fromAdmin["team/t"])
	}
}
