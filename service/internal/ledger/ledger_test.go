package ledger

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/testenv"
)

// TestMigrateIdempotentAndConcurrent: two replicas migrating at once apply
// each version once, and a later start applies nothing.
func TestMigrateIdempotentAndConcurrent(t *testing.T) {
	pg := testenv.StartPostgres(t)
	ms, err := loadMigrations()
	if err != nil || len(ms) == 0 {
		t.Fatalf("migrations: %v %v", ms, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	var wg sync.WaitGroup
	applied := make([][]int, 2)
	errs := make([]error, 2)
	for i := range 2 {
		p := pool(t, pg.URL)
		wg.Add(1)
		go func() {
			defer wg.Done()
			applied[i], errs[i] = Migrate(ctx, p)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
	}
	if got := len(applied[0]) + len(applied[1]); got != len(ms) {
		t.Errorf("applied %v and %v: want each of the %d versions once", applied[0], applied[1], len(ms))
	}
	p := pool(t, pg.URL)
	again, err := Migrate(ctx, p)
	if err != nil || len(again) != 0 {
		t.Errorf("a third start applied %v (%v), want nothing", again, err)
	}
	var n, distinct int
	if err := p.QueryRow(ctx, "SELECT count(*), count(DISTINCT version) FROM schema_migrations").Scan(&n, &distinct); err != nil {
		t.Fatal(err)
	}
	if n != len(ms) || distinct != len(ms) {
		t.Errorf("schema_migrations holds %d rows (%d versions), want %d", n, distinct, len(ms))
	}
	// The advisory lock was let go: another session can take it at once.
	var got bool
	if err := p.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", migrationLock).Scan(&got); err != nil || !got {
		t.Errorf("migration lock still held after Migrate (%v)", err)
	}
}

// TestBatchesAndCloseFlushes: with a batch interval longer than the test,
// rows are committed batch_rows at a time, and Close writes the partial
// batch left over. Every field survives the trip.
func TestBatchesAndCloseFlushes(t *testing.T) {
	pg := testenv.StartPostgres(t)
	o := testOptions(pg.URL, t.TempDir())
	o.BatchRows, o.BatchInterval = 10, time.Hour
	l := open(t, o)
	p := pool(t, pg.URL)
	for i := range 95 {
		l.Write(testRow(i))
	}
	waitRows(t, p, 90)
	closeLedger(t, l)
	if n := count(t, p); n != 95 {
		t.Fatalf("after Close: %d rows, want 95", n)
	}
	var txns int
	if err := p.QueryRow(context.Background(), "SELECT count(DISTINCT xmin::text) FROM ledger").Scan(&txns); err != nil {
		t.Fatal(err)
	}
	if txns != 10 {
		t.Errorf("95 rows were committed in %d transactions, want 10 (9 full batches of 10, and Close's 5)", txns)
	}
	reg := o.Registerer.(*prometheus.Registry)
	if got := testenv.MetricValue(t, reg, "relaygate_ledger_rows_total", map[string]string{"result": metrics.LedgerWritten}); got != 95 {
		t.Errorf("rows_total{result=written} = %v, want 95", got)
	}

	// A fresh ledger reads what the first wrote.
	l2 := open(t, testOptions(pg.URL, t.TempDir()))
	want := testRow(7)
	want.TTFT = 12 * time.Millisecond
	want.CacheHit, want.Stream, want.CachedTokens, want.ReasoningTokens = true, true, 5, 3
	want.ID, want.RequestID = "row-extra", "req-extra"
	want.FallbackPath = []string{"a", "b"}
	l2.Write(want)
	waitRows(t, p, 96)
	got, ok, err := l2.Lookup(context.Background(), "req-extra")
	if err != nil || !ok {
		t.Fatalf("Lookup: %v %v", ok, err)
	}
	if !got.Time.Equal(want.Time) {
		t.Errorf("time %v, want %v", got.Time, want.Time)
	}
	got.Time = want.Time
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Lookup =\n%+v\nwant\n%+v", got, want)
	}
	if _, ok, err := l2.Lookup(context.Background(), "req-none"); ok || err != nil {
		t.Errorf("Lookup of an unknown id: %v %v", ok, err)
	}
}

// TestSpillAndReplayInOrder: rows written while Postgres is down (from the
// start: no schema yet) go to the spill file, and reach Postgres in the
// order written once it is back; the spill files are then removed.
func TestSpillAndReplayInOrder(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.Stop()
	dir := t.TempDir()
	o := testOptions(pg.URL, dir)
	o.BatchRows = 7
	l := open(t, o)
	const n = 500
	for i := range n {
		l.Write(testRow(i))
		if i%50 == 0 {
			time.Sleep(5 * time.Millisecond) // several batches, several flushes
		}
	}
	reg := o.Registerer.(*prometheus.Registry)
	spilled := map[string]string{"result": metrics.LedgerSpilled}
	testenv.WaitFor(t, guard, fmt.Sprintf("%d rows spilled", n), func() bool {
		return testenv.MetricValue(t, reg, "relaygate_ledger_rows_total", spilled) >= n
	})
	if _, b := l.Pending(); b == 0 {
		t.Error("spill_bytes is 0 with rows spilled")
	}
	if testenv.MetricValue(t, reg, "relaygate_ledger_errors_total", map[string]string{"op": metrics.LedgerOpMigrate}) == 0 {
		t.Error("no migrate error counted while Postgres was down")
	}
	pg.Start()
	p := pool(t, pg.URL)
	waitRows(t, p, n)
	got := ids(t, p)
	for i, id := range got {
		if id != testRow(i).ID {
			t.Fatalf("row %d in commit order is %s, want %s: replay must keep the order written", i, id, testRow(i).ID)
		}
	}
	if r := testenv.MetricValue(t, reg, "relaygate_ledger_rows_total", map[string]string{"result": metrics.LedgerReplayed}); r != n {
		t.Errorf("rows_total{result=replayed} = %v, want %d", r, n)
	}
	// Rows written now go straight to Postgres again.
	l.Write(testRow(n))
	waitRows(t, p, n+1)
	waitReplayed(t, l)
	closeLedger(t, l)
	if files := segments(t, dir); len(files) != 0 {
		t.Errorf("spill files left after everything was replayed: %v", files)
	}
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, segmentPrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestReplayIsExactlyOnce: a spill file holding rows Postgres already has
// (a batch whose commit succeeded but whose answer was lost), left by an
// earlier run, is replayed at start without duplicating them; a row cut
// short by a crash is counted as dropped and the rest are kept.
func TestReplayIsExactlyOnce(t *testing.T) {
	pg := testenv.StartPostgres(t)
	p := pool(t, pg.URL)
	l := open(t, testOptions(pg.URL, t.TempDir()))
	for i := range 100 {
		l.Write(testRow(i))
	}
	waitRows(t, p, 100)
	closeLedger(t, l)

	dir := t.TempDir()
	sp, err := openSpill(dir, maxSegmentBytes)
	if err != nil {
		t.Fatal(err)
	}
	var again []Row
	for i := 50; i < 150; i++ { // 50 stored already, 50 new
		again = append(again, testRow(i))
	}
	if n, err := sp.Append(again); err != nil || n != len(again) {
		t.Fatal(n, err)
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	// The crash cut the last line.
	files := segments(t, dir)
	f, err := os.OpenFile(files[len(files)-1], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"id":"row-cut","at":"2026-12-03T12:00`); err != nil {
		t.Fatal(err)
	}
	f.Close()

	o := testOptions(pg.URL, dir)
	l = open(t, o)
	waitRows(t, p, 150)
	closeLedger(t, l)
	if n := count(t, p); n != 150 {
		t.Errorf("%d rows, want 150: a replayed row must be stored once", n)
	}
	var dups int
	if err := p.QueryRow(context.Background(), "SELECT count(*) FROM (SELECT request_id FROM ledger GROUP BY request_id HAVING count(*) > 1) d").Scan(&dups); err != nil {
		t.Fatal(err)
	}
	if dups != 0 {
		t.Errorf("%d request ids stored more than once", dups)
	}
	reg := o.Registerer.(*prometheus.Registry)
	if got := testenv.MetricValue(t, reg, "relaygate_ledger_rows_total", map[string]string{"result": metrics.LedgerDropped}); got != 1 {
		t.Errorf("rows_total{result=dropped} = %v, want 1 (the cut line)", got)
	}
	if files := segments(t, dir); len(files) != 0 {
		t.Errorf("spill files left: %v", files)
	}
}

// TestQueueFullSpillsNothingLost: a queue of one row, and a Postgres that
// goes away and comes back, lose nothing: rows that find the queue full go
// to the spill file, and Close's leftovers are replayed by the next Open.
func TestQueueFullSpillsNothingLost(t *testing.T) {
	pg := testenv.StartPostgres(t)
	dir := t.TempDir()
	o := testOptions(pg.URL, dir)
	o.QueueRows, o.BatchRows = 1, 3
	l := open(t, o)
	var wg sync.WaitGroup
	const writers, each = 8, 250
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				l.Write(testRow(w*each + i))
				if w == 0 && i == each/2 {
					pg.Stop()
				}
			}
		}()
	}
	wg.Wait()
	closeLedger(t, l)
	reg := o.Registerer.(*prometheus.Registry)
	if testenv.MetricValue(t, reg, "relaygate_ledger_rows_total", map[string]string{"result": metrics.LedgerSpilled}) == 0 {
		t.Error("nothing was spilled with a one-row queue and Postgres down")
	}
	pg.Start()
	l = open(t, testOptions(pg.URL, dir))
	p := pool(t, pg.URL)
	waitRows(t, p, writers*each)
	closeLedger(t, l)
}

// TestSpend sums the committed rows a filter selects.
func TestSpend(t *testing.T) {
	pg := testenv.StartPostgres(t)
	l := open(t, testOptions(pg.URL, t.TempDir()))
	p := pool(t, pg.URL)
	var want Spend
	for i := range 60 {
		r := testRow(i)
		l.Write(r)
		if r.Team == "search" && r.KeyName == "app-1" {
			want.Requests++
			want.PromptTokens += r.PromptTokens
			want.CompletionTokens += r.CompletionTokens
			want.CostUSD += r.CostUSD
			want.SavingsUSD += r.SavingsUSD
		}
	}
	waitRows(t, p, 60)
	ctx := context.Background()
	got, err := l.Spend(ctx, SpendFilter{Team: "search", Key: "app-1"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Requests != want.Requests || got.PromptTokens != want.PromptTokens || got.CompletionTokens != want.CompletionTokens ||
		!near(got.CostUSD, want.CostUSD) || !near(got.SavingsUSD, want.SavingsUSD) {
		t.Errorf("Spend = %+v, want %+v", got, want)
	}
	all, err := l.Spend(ctx, SpendFilter{})
	if err != nil || all.Requests != 60 {
		t.Errorf("Spend of everything: %+v %v", all, err)
	}
	from := testRow(30).Time
	later, err := l.Spend(ctx, SpendFilter{From: from, To: from.Add(10 * time.Millisecond)})
	if err != nil || later.Requests != 10 {
		t.Errorf("Spend of [30, 40): %+v %v, want 10 requests", later, err)
	}
	none, err := l.Spend(ctx, SpendFilter{Team: "nobody"})
	if err != nil || none != (Spend{}) {
		t.Errorf("Spend of an unknown team: %+v %v", none, err)
	}
}

func near(a, b float64) bool { d := a - b; return d < 1e-9 && d > -1e-9 }

// TestSpillDirIsExclusive: a second ledger on the same spill directory is
// refused, so two processes never append to one file.
func TestSpillDirIsExclusive(t *testing.T) {
	dir := t.TempDir()
	o := testOptions("postgres://127.0.0.1:1/none?sslmode=disable", dir)
	l := open(t, o)
	o.Registerer = prometheus.NewRegistry()
	if _, err := Open(context.Background(), o); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("a second Open on %s: %v, want it refused", dir, err)
	}
	closeLedger(t, l)
	o.Registerer = prometheus.NewRegistry()
	l = open(t, o)
	closeLedger(t, l)
	if _, err := Open(context.Background(), Options{URL: "postgres://u:p@h/db?sslmode=bogus", SpillDir: t.TempDir()}); err == nil || strings.Contains(err.Error(), "u:p") {
		t.Errorf("a bad URL: %v, want an error that does not quote it", err)
	}
}

// TestTextPostgresWouldRefuse: a NUL byte or invalid UTF-8 in a name (a
// model name in the config may hold either) is cleaned, not retried for
// ever in front of every later row.
func TestTextPostgresWouldRefuse(t *testing.T) {
	pg := testenv.StartPostgres(t)
	l := open(t, testOptions(pg.URL, t.TempDir()))
	p := pool(t, pg.URL)
	odd := testRow(1)
	odd.Model = "m\x00odd\xff"
	l.Write(odd)
	l.Write(testRow(2))
	waitRows(t, p, 2)
	got, ok, err := l.Lookup(context.Background(), odd.RequestID)
	if err != nil || !ok || got.Model != "modd\uFFFD" {
		t.Errorf("Lookup = %q %v %v, want the model cleaned", got.Model, ok, err)
	}
}
