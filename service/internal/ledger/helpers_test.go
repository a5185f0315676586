package ledger

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/relaygate/relaygate/service/internal/testenv"
)

// guard bounds every wait: a failure guard, never an expectation.
const guard = 60 * time.Second

func testRow(i int) Row {
	teams := []string{"search", "support"}
	return Row{
		ID:               fmt.Sprintf("row-%07d", i),
		Time:             time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Millisecond),
		RequestID:        fmt.Sprintf("req-%07d", i),
		KeyName:          fmt.Sprintf("app-%d", i%3),
		Team:             teams[i%2],
		API:              "chat",
		Model:            "gpt-4.1",
		Upstream:         "relay",
		Status:           200,
		UsageKnown:       true,
		PromptTokens:     int64(10 + i%7),
		CompletionTokens: 20,
		CostUSD:          0.001 * float64(1+i%5),
		SavingsUSD:       0.0005,
		Latency:          time.Duration(30+i%10) * time.Millisecond,
		Attempts:         1,
		FallbackPath:     []string{"relay"},
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewJSONHandler(io.Discard, nil)) }

func testOptions(url, dir string) Options {
	return Options{URL: url, SpillDir: dir, BatchInterval: 20 * time.Millisecond, FsyncInterval: 20 * time.Millisecond,
		WriteTimeout: 2 * time.Second, Logger: quietLogger(), Registerer: prometheus.NewRegistry()}
}

func open(t *testing.T, o Options) *Ledger {
	t.Helper()
	l, err := Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	return l
}

func closeLedger(t *testing.T, l *Ledger) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func pool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func count(t *testing.T, p *pgxpool.Pool) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	var n int
	if err := p.QueryRow(ctx, "SELECT count(*) FROM ledger").Scan(&n); err != nil {
		t.Fatalf("count: %v", err)
	}
	return n
}

// waitRows waits until the ledger table holds want rows.
func waitRows(t *testing.T, p *pgxpool.Pool, want int) {
	t.Helper()
	deadline := time.Now().Add(guard)
	var n int
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := p.QueryRow(ctx, "SELECT count(*) FROM ledger").Scan(&n)
		cancel()
		if err == nil && n >= want {
			if n > want {
				t.Fatalf("ledger holds %d rows, want %d", n, want)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("ledger holds %d rows after %s, want %d", n, guard, want)
}

// ids returns the table's row ids in commit order: by transaction, then by
// position in the table.
func ids(t *testing.T, p *pgxpool.Pool) []string {
	t.Helper()
	rows, err := p.Query(context.Background(), "SELECT id FROM ledger ORDER BY xmin::text::bigint, ctid")
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitReplayed waits until l holds no spilled bytes: every spill file
// replayed to Postgres.
func waitReplayed(t *testing.T, l *Ledger) {
	t.Helper()
	testenv.WaitFor(t, guard, "spill files replayed (spill bytes back to 0)", func() bool {
		_, b := l.Pending()
		return b == 0
	})
}
