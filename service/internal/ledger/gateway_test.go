package ledger_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/app"
	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

const clientKey = "sk-ledger-test-client-key-0123456789"

// TestPostgresKilledUnderLoad is the acceptance test: real
// requests at about 300 a second through a real gateway (app.New, as the
// command builds it) while its Postgres is shut down in immediate mode and
// started again. Afterwards every X-Request-Id a client got is in the
// ledger exactly once, and nothing else is. The rate is a target, not an
// assertion: a slow machine sends fewer requests and proves the same.
func TestPostgresKilledUnderLoad(t *testing.T) {
	pg := testenv.StartPostgres(t)
	a := startApp(t, pg)
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = a.Close()
		}
	})
	gw := httptest.NewServer(a.Handler())
	t.Cleanup(gw.Close)

	const rate, seconds = 300, 6
	const total = rate * seconds
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: time.Minute}
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hello"}]}`)
	var (
		mu       sync.Mutex
		got      = map[string]int{} // X-Request-Id → answers carrying it
		statuses = map[int]int{}
		failures []error
	)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	start := time.Now()
	stopped, restarted := false, false
	for i := range total {
		// Postgres goes down a third of the way in and comes back at two
		// thirds, with requests arriving all along.
		switch {
		case !stopped && i >= total/3:
			stopped = true
			go pg.Stop()
		case !restarted && i >= 2*total/3:
			restarted = true
			wg.Add(1)
			go func() { defer wg.Done(); pg.Start() }()
		}
		if d := time.Until(start.Add(time.Duration(i) * time.Second / rate)); d > 0 {
			time.Sleep(d)
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+clientKey)
			resp, err := client.Do(req)
			if err != nil {
				mu.Lock()
				failures = append(failures, err)
				mu.Unlock()
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			mu.Lock()
			got[resp.Header.Get("X-Request-Id")]++
			statuses[resp.StatusCode]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(failures) > 0 {
		t.Fatalf("%d requests failed at the client, e.g. %v", len(failures), failures[0])
	}
	if statuses[200] != total {
		t.Errorf("statuses %v: the gateway must serve all %d while Postgres is down", statuses, total)
	}
	t.Logf("%d requests in %s (%.0f/s), Postgres down for a third of them", total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds())

	p, err := pgxpool.New(context.Background(), pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// The replay catches up while the gateway runs.
	deadline := time.Now().Add(60 * time.Second)
	var n int
	for time.Now().Before(deadline) {
		if err := p.QueryRow(context.Background(), "SELECT count(*) FROM ledger").Scan(&n); err == nil && n >= total {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	closed = true
	if err := a.Close(); err != nil {
		t.Fatalf("app.Close: %v", err)
	}
	rows, err := p.Query(context.Background(), "SELECT request_id, count(*) FROM ledger GROUP BY request_id")
	if err != nil {
		t.Fatal(err)
	}
	type idCount struct {
		ID string
		N  int
	}
	counts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[idCount])
	if err != nil {
		t.Fatal(err)
	}
	inLedger := map[string]int{}
	for _, c := range counts {
		inLedger[c.ID] = c.N
	}
	missing, dup, extra := 0, 0, 0
	for id, k := range got {
		if k != 1 {
			t.Errorf("X-Request-Id %s answered %d times", id, k)
		}
		switch inLedger[id] {
		case 0:
			missing++
		case 1:
		default:
			dup++
		}
	}
	for id := range inLedger {
		if got[id] == 0 {
			extra++
		}
	}
	if missing > 0 || dup > 0 || extra > 0 || len(got) != total {
		t.Errorf("of %d requests: %d missing from the ledger, %d in it more than once, %d rows no client saw", len(got), missing, dup, extra)
	}
	var spilled, replayed float64
	mfs, _ := a.Metrics.Registry.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "relaygate_ledger_rows_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch m.GetLabel()[0].GetValue() {
			case "spilled":
				spilled = m.GetCounter().GetValue()
			case "replayed":
				replayed = m.GetCounter().GetValue()
			}
		}
	}
	t.Logf("ledger: %d rows, %.0f spilled while Postgres was down, %.0f replayed", len(counts), spilled, replayed)
	if spilled == 0 || replayed < spilled {
		t.Errorf("spilled %.0f, replayed %.0f: rows written while Postgres was down must spill and be replayed", spilled, replayed)
	}
}

// startApp builds a gateway as the command does, on an upstream simulator,
// with its ledger on pg. The caller closes it.
func startApp(t *testing.T, pg *testenv.Postgres) *app.App {
	t.Helper()
	sim := httptest.NewServer(upstreamsim.New(upstreamsim.Config{Latency: 5 * time.Millisecond, CompletionTokens: 8}))
	t.Cleanup(sim.Close)
	return newApp(t, appDoc(sim.URL, fmt.Sprintf(`ledger:
  postgres_url: %q
  spill_dir: %q
  batch_interval: 50ms
  fsync_interval: 50ms
  write_timeout: 1s
`, pg.URL, t.TempDir())))
}

// appDoc is the config of a gateway for clientKey whose one model, m,
// routes to the simulator at simURL at $1 and $2 per million tokens ($4
// and $8 the reference), and then extra: teams, keys, the ledger.
func appDoc(simURL, extra string) string {
	return fmt.Sprintf(`listen: "127.0.0.1:0"
client_keys: [%q]
upstreams:
  - {name: sim, base_url: %q}
models:
  - name: m
    route: [sim]
    price: {input_per_mtok: 1, output_per_mtok: 2}
    reference_price: {input_per_mtok: 4, output_per_mtok: 8}
gpu: {interval: 1h}
log: {requests: false}
%s`, clientKey, simURL+"/v1", extra)
}

// newApp builds a gateway from a config document as the command does.
// The caller closes it.
func newApp(t *testing.T, doc string) *app.App {
	t.Helper()
	cfg, err := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.New(context.Background(), cfg, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	return a
}

// serveApp serves a over loopback; at the test's end the server, then a,
// are closed.
func serveApp(t *testing.T, a *app.App) *httptest.Server {
	t.Helper()
	t.Cleanup(func() { _ = a.Close() })
	gw := httptest.NewServer(a.Handler())
	t.Cleanup(gw.Close)
	return gw
}

// TestGatewayStartsWithPostgresDown: a gateway whose Postgres is down at
// start serves anyway, spills the rows (and counts it), and replays them
// once Postgres is up, schema migrations included.
func TestGatewayStartsWithPostgresDown(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.Stop()
	a := startApp(t, pg)
	gw := serveApp(t, a)

	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions",
		bytes.NewReader([]byte(`{"model":"m","messages":[{"role":"user","content":"hello"}]}`)))
	req.Header.Set("Authorization", "Bearer "+clientKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d with Postgres down, want the request served", resp.StatusCode)
	}
	id := resp.Header.Get("X-Request-Id")
	deadline := time.Now().Add(time.Minute)
	for testenv.MetricValue(t, a.Metrics.Registry, "relaygate_ledger_rows_total", map[string]string{"result": "spilled"}) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the row was not spilled")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if testenv.MetricValue(t, a.Metrics.Registry, "relaygate_ledger_errors_total", map[string]string{"op": "migrate"}) < 1 || testenv.MetricValue(t, a.Metrics.Registry, "relaygate_ledger_postgres_up", nil) != 0 {
		t.Error("Postgres down at start is not counted in relaygate_ledger_errors_total{op=migrate} and relaygate_ledger_postgres_up")
	}
	pg.Start()
	for {
		row, ok, err := a.Ledger.Lookup(context.Background(), id)
		if ok {
			if row.Status != 200 || row.Model != "m" || row.Upstream != "sim" || !row.UsageKnown || row.CostUSD <= 0 {
				t.Errorf("row %+v", row)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s not in the ledger a minute after Postgres came back (%v)", id, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if testenv.MetricValue(t, a.Metrics.Registry, "relaygate_ledger_postgres_up", nil) != 1 {
		t.Error("relaygate_ledger_postgres_up is not 1 after the replay")
	}
}
