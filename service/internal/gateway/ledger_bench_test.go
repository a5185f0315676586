package gateway

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relaygate/relaygate/service/internal/ledger"
	"github.com/relaygate/relaygate/service/internal/testenv"
)

// BenchmarkLedger is BenchmarkHandler's completion with the ledger off,
// then on (a real ledger on a real Postgres), in one run: the difference
// in ns/op is what the ledger adds to the request path (building the row
// and queueing it) plus the CPU its own goroutine spends batching and
// copying beside it on the same cores. The queue holds every row, since a
// loop with no network in it outruns Postgres, and rows beyond a full
// queue would measure the spill file instead (spilled/op says if any did).
func BenchmarkLedger(b *testing.B) {
	pg := testenv.StartPostgres(b)
	for _, on := range []bool{false, true} {
		b.Run(onOff(on), func(b *testing.B) {
			srv, reg := ledgerBenchServer(b, pg, on, b.N)
			req := ledgerBenchRequest()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				req(b, srv)
			}
			b.StopTimer()
			if reg != nil {
				b.ReportMetric(rowsCounter(reg, "spilled")/float64(b.N), "spilled/op")
			}
		})
	}
}

// BenchmarkLedgerPaced sends the requests at 2,000 a second, the issue's
// rate, and reports each request's time through the handler at p50 and
// p99, ledger off then on: the latency the ledger adds at that rate, with
// Postgres taking every row as it comes. Run it with -benchtime 4000x
// (two seconds) or more.
func BenchmarkLedgerPaced(b *testing.B) {
	pg := testenv.StartPostgres(b)
	const rate = 2000
	for _, on := range []bool{false, true} {
		b.Run(onOff(on), func(b *testing.B) {
			srv, reg := ledgerBenchServer(b, pg, on, 0)
			req := ledgerBenchRequest()
			took := make([]time.Duration, b.N)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if d := time.Until(start.Add(time.Duration(i) * time.Second / rate)); d > 0 {
					time.Sleep(d)
				}
				t0 := time.Now()
				req(b, srv)
				took[i] = time.Since(t0)
			}
			b.StopTimer()
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2]), "p50-ns")
			b.ReportMetric(float64(took[min(len(took)-1, len(took)*99/100)]), "p99-ns")
			if reg != nil {
				b.ReportMetric(rowsCounter(reg, "spilled")/float64(b.N), "spilled/op")
			}
		})
	}
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// ledgerBenchServer is benchServer's gateway, with a ledger on pg when on
// (its queue at least queue rows).
func ledgerBenchServer(b *testing.B, pg *testenv.Postgres, on bool, queue int) (*Server, *prometheus.Registry) {
	b.Helper()
	srv := benchServer(b, false, []byte(completionJSON), "application/json")
	if !on {
		return srv, nil
	}
	reg := prometheus.NewRegistry()
	l, err := ledger.Open(context.Background(), ledger.Options{URL: pg.URL, SpillDir: b.TempDir(), QueueRows: max(queue, 10000),
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)), Registerer: reg})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = l.Close(ctx)
	})
	srv.ledger = l
	return srv, reg
}

func ledgerBenchRequest() func(*testing.B, *Server) {
	body := []byte(chatBody)
	return func(b *testing.B, srv *Server) {
		req := httptest.NewRequest("POST", "/v1/chat/completions", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testClientKey)
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
}

func rowsCounter(reg *prometheus.Registry, result string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "relaygate_ledger_rows_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
