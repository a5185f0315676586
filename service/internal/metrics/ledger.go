package metrics

import "github.com/prometheus/client_golang/prometheus"

// Ledger results of relaygate_ledger_rows_total.
const (
	// LedgerWritten: committed to Postgres from memory.
	LedgerWritten = "written"
	// LedgerSpilled: appended to the local spill file (Postgres slow or
	// down, a backlog to replay first, or the queue full).
	LedgerSpilled = "spilled"
	// LedgerReplayed: committed to Postgres from the spill file.
	LedgerReplayed = "replayed"
	// LedgerDropped: lost (the spill file could not be written, or a
	// line of it could not be read back).
	LedgerDropped = "dropped"
)

// Ledger operations of relaygate_ledger_errors_total.
const (
	LedgerOpWrite   = "write"   // a batch's COPY or commit
	LedgerOpReplay  = "replay"  // a spilled batch's COPY or commit
	LedgerOpMigrate = "migrate" // the schema migrations at start
	LedgerOpSpill   = "spill"   // writing, fsyncing or reading the spill file
)

// LedgerMetrics are the usage ledger's series. Every label value is from
// the fixed sets above.
type LedgerMetrics struct {
	rows   map[string]prometheus.Counter
	errors map[string]prometheus.Counter
	up     prometheus.Gauge
}

// NewLedger registers the ledger's metrics on r. queueRows and spillBytes
// are read at scrape time, so the hot path moves no gauge.
func NewLedger(r prometheus.Registerer, queueRows, spillBytes func() float64) *LedgerMetrics {
	rows := counterVec("relaygate_ledger_rows_total",
		"Usage ledger rows by what became of them: written (to Postgres), spilled (to the local spill file), replayed (from it to Postgres), dropped (lost).",
		"result")
	errs := counterVec("relaygate_ledger_errors_total",
		"Usage ledger failures by operation: write, replay, migrate (Postgres) and spill (the local file).",
		"op")
	up := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "relaygate_ledger_postgres_up",
		Help: "1 while the ledger's last Postgres operation succeeded, 0 while it spills.",
	})
	queue := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "relaygate_ledger_queue_rows",
		Help: "Usage ledger rows waiting in memory for their batch.",
	}, queueRows)
	spill := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "relaygate_ledger_spill_bytes",
		Help: "Bytes of the ledger's spill files not yet replayed to Postgres.",
	}, spillBytes)
	r.MustRegister(rows, errs, up, queue, spill)
	m := &LedgerMetrics{rows: map[string]prometheus.Counter{}, errors: map[string]prometheus.Counter{}, up: up}
	for _, res := range []string{LedgerWritten, LedgerSpilled, LedgerReplayed, LedgerDropped} {
		m.rows[res] = rows.WithLabelValues(res)
	}
	for _, op := range []string{LedgerOpWrite, LedgerOpReplay, LedgerOpMigrate, LedgerOpSpill} {
		m.errors[op] = errs.WithLabelValues(op)
	}
	return m
}

// Rows counts n rows with a result.
func (m *LedgerMetrics) Rows(result string, n int) {
	if m != nil && n > 0 {
		m.rows[result].Add(float64(n))
	}
}

// Error counts one failed operation.
func (m *LedgerMetrics) Error(op string) {
	if m != nil {
		m.errors[op].Inc()
	}
}

// PostgresUp sets whether the last Postgres operation succeeded.
func (m *LedgerMetrics) PostgresUp(up bool) {
	if m == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.up.Set(v)
}
