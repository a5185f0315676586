// Package ledger is the usage ledger: one row per request the gateway
// answered or refused, in Postgres, for chargeback and audit. Writing is
// off the request path: Write puts a row on a bounded in-memory queue and
// returns; a background loop batches rows and copies them with COPY into a
// staging table, then INSERT … ON CONFLICT (id) DO NOTHING, so a batch
// written twice is stored once.
//
// Nothing is lost while the process lives: when Postgres is slow or down
// (or the queue is full), rows go to an append-only spill file in
// spill_dir, fsynced every fsync_interval, and are replayed in order once
// Postgres is back; spill files left by an earlier run are replayed first.
// A crash (kill -9, OOM) loses the rows not yet committed nor fsynced: those
// accepted in about the last batch_interval + fsync_interval, plus, while a
// write to Postgres hangs, up to write_timeout more (see TestCrashLoss).
package ledger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/relaygate/relaygate/internal/defaults"
	"github.com/relaygate/relaygate/service/internal/metrics"
)

// Options configure a Ledger; zero values take the defaults below.
type Options struct {
	// URL is the Postgres connection URL.
	URL string
	// SpillDir holds the spill files (created if missing). One process
	// per directory.
	SpillDir string
	// BatchInterval is the longest a row waits in memory for its batch.
	BatchInterval time.Duration
	// BatchRows is the most rows one COPY writes.
	BatchRows int
	// QueueRows bounds the rows waiting in memory; a row beyond it goes
	// to the spill file at once.
	QueueRows int
	// FsyncInterval is how often spilled rows are fsynced.
	FsyncInterval time.Duration
	// WriteTimeout bounds one batch's write; a batch not committed by
	// then is spilled.
	WriteTimeout time.Duration
	Logger       *slog.Logger
	// Registerer takes the ledger's metrics; nil registers none.
	Registerer prometheus.Registerer
}

const (
	defaultBatchInterval = 200 * time.Millisecond
	defaultBatchRows     = 500
	defaultQueueRows     = 10000
	defaultFsyncInterval = 200 * time.Millisecond
	defaultWriteTimeout  = 5 * time.Second
	// maxSegmentBytes bounds one spill file, and so the memory a replay
	// reads at once.
	maxSegmentBytes = 4 << 20
	// retryMin and retryMax bound the wait between tries while Postgres
	// is down.
	retryMin = 200 * time.Millisecond
	retryMax = 5 * time.Second
)

// Ledger writes rows to Postgres in the background. Its methods are safe
// for concurrent use.
type Ledger struct {
	opts  Options
	log   *slog.Logger
	pool  *pgxpool.Pool
	m     *metrics.LedgerMetrics
	queue chan Row
	spill *spill

	// mu is held shared by Write and exclusively by Close, so that no row
	// is queued after the loop's last drain.
	mu     sync.RWMutex
	closed bool

	stopc    chan context.Context
	done     chan struct{}
	syncStop chan struct{}
	syncDone chan struct{}
	closeErr error

	// Owned by the loop.
	migrated  bool
	down      bool
	downUntil time.Time
	backoff   time.Duration
	replay    *replayState
}

// replayState is the segment being replayed and how far it has been.
type replayState struct {
	seg  *segment
	rows []Row
	next int
}

// Open starts a ledger. Postgres need not be up: the schema migrations run
// on the first connection, and rows spill until then. It fails only for a
// URL that cannot be parsed or a spill directory that cannot be used.
func Open(ctx context.Context, o Options) (*Ledger, error) {
	defaults.Positive(&o.BatchInterval, defaultBatchInterval)
	defaults.Positive(&o.BatchRows, defaultBatchRows)
	defaults.Positive(&o.QueueRows, defaultQueueRows)
	defaults.Positive(&o.FsyncInterval, defaultFsyncInterval)
	defaults.Positive(&o.WriteTimeout, defaultWriteTimeout)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.SpillDir == "" {
		return nil, errors.New("ledger: no spill directory")
	}
	pcfg, err := pgxpool.ParseConfig(o.URL)
	if err != nil {
		// pgx's message may quote the URL, password and all.
		return nil, errors.New("ledger: postgres_url cannot be parsed as a Postgres connection URL")
	}
	pcfg.MaxConns = 4
	if pcfg.ConnConfig.ConnectTimeout == 0 || pcfg.ConnConfig.ConnectTimeout > o.WriteTimeout {
		pcfg.ConnConfig.ConnectTimeout = o.WriteTimeout
	}
	if _, ok := pcfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		pcfg.ConnConfig.RuntimeParams["application_name"] = "relaygate-ledger"
	}
	sp, err := openSpill(o.SpillDir, maxSegmentBytes)
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(context.WithoutCancel(ctx), pcfg)
	if err != nil {
		_ = sp.Close()
		return nil, fmt.Errorf("ledger: %w", err)
	}
	l := &Ledger{
		opts:     o,
		log:      o.Logger.With("component", "ledger"),
		pool:     pool,
		queue:    make(chan Row, o.QueueRows),
		spill:    sp,
		stopc:    make(chan context.Context, 1),
		done:     make(chan struct{}),
		syncStop: make(chan struct{}),
		syncDone: make(chan struct{}),
	}
	if o.Registerer != nil {
		l.m = metrics.NewLedger(o.Registerer,
			func() float64 { return float64(len(l.queue)) },
			func() float64 { return float64(l.spill.Bytes()) })
	}
	if b := sp.Bytes(); b > 0 {
		l.log.Info("spill files from an earlier run will be replayed", "bytes", b, "dir", o.SpillDir)
	}
	go l.syncLoop()
	go l.run()
	return l, nil
}

// Write queues a row. It never waits on Postgres: when the queue is full
// the row is appended to the spill file instead. After Close a row is
// dropped (and counted).
func (l *Ledger) Write(r Row) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		l.m.Rows(metrics.LedgerDropped, 1)
		return
	}
	select {
	case l.queue <- r:
	default:
		l.toSpill([]Row{r})
	}
}

// Close writes what is queued (to Postgres, or to the spill file when
// Postgres does not take it before ctx ends), fsyncs the spill file and
// closes the pool. Spilled rows are replayed by the next Open.
func (l *Ledger) Close(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	l.stopc <- ctx
	// Everything the loop does from here is bounded by ctx or is a local
	// file write, so this wait ends soon after ctx does.
	<-l.done
	return l.closeErr
}

// Pending is how many rows wait in memory and how many bytes of spill
// files wait for replay.
func (l *Ledger) Pending() (queued int, spillBytes int64) {
	return len(l.queue), l.spill.Bytes()
}

func (l *Ledger) syncLoop() {
	defer close(l.syncDone)
	t := time.NewTicker(l.opts.FsyncInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := l.spill.Sync(); err != nil {
				l.m.Error(metrics.LedgerOpSpill)
				l.log.Error("spill file fsync failed; rows since the last fsync would not survive a crash", "error", err.Error())
			}
		case <-l.syncStop:
			return
		}
	}
}

func (l *Ledger) run() {
	defer close(l.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tick := time.NewTicker(l.opts.BatchInterval)
	defer tick.Stop()
	batch := make([]Row, 0, l.opts.BatchRows)
	l.ready(ctx) // migrate now, when Postgres is up
	for {
		select {
		case r := <-l.queue:
			batch = append(batch, r)
			if len(batch) >= l.opts.BatchRows {
				l.flush(ctx, batch)
				batch = batch[:0]
			}
		case <-tick.C:
			if len(batch) > 0 {
				l.flush(ctx, batch)
				batch = batch[:0]
			}
			l.replayFor(ctx, l.opts.BatchInterval)
		case cctx := <-l.stopc:
			l.closeErr = l.drain(cctx, batch)
			return
		}
	}
}

// drain writes the queue's last rows and shuts the ledger's parts down.
func (l *Ledger) drain(ctx context.Context, batch []Row) error {
	for more := true; more; {
		select {
		case r := <-l.queue:
			batch = append(batch, r)
		default:
			more = false
		}
	}
	for len(batch) > 0 {
		n := min(len(batch), l.opts.BatchRows)
		if ctx.Err() != nil {
			n = len(batch)
			l.toSpill(batch)
		} else {
			l.flush(ctx, batch[:n])
		}
		batch = batch[n:]
	}
	close(l.syncStop)
	<-l.syncDone
	err := l.spill.Close()
	if err != nil {
		l.m.Error(metrics.LedgerOpSpill)
		err = fmt.Errorf("ledger: %w", err)
	}
	l.pool.Close()
	return err
}

// flush writes one batch: to Postgres when it is up and nothing spilled
// waits before the batch (rows reach Postgres in order), else to the spill.
func (l *Ledger) flush(ctx context.Context, batch []Row) {
	if !l.spill.Empty() || !l.ready(ctx) {
		l.toSpill(batch)
		return
	}
	if err := l.copy(ctx, batch); err != nil {
		l.failed(metrics.LedgerOpWrite, err)
		l.toSpill(batch)
		return
	}
	l.ok()
	l.m.Rows(metrics.LedgerWritten, len(batch))
}

func (l *Ledger) toSpill(rows []Row) {
	n, err := l.spill.Append(rows)
	l.m.Rows(metrics.LedgerSpilled, n)
	if err != nil {
		l.m.Rows(metrics.LedgerDropped, len(rows)-n)
		l.m.Error(metrics.LedgerOpSpill)
		l.log.Error("ledger rows lost: the spill file could not be written", "rows", len(rows)-n, "error", err.Error())
	}
}

// replayFor replays spilled rows to Postgres, oldest first, for up to
// budget, so the loop gets back to the queue in time.
func (l *Ledger) replayFor(ctx context.Context, budget time.Duration) {
	deadline := time.Now().Add(budget)
	for time.Now().Before(deadline) {
		if l.replay == nil {
			if l.spill.Empty() || !l.ready(ctx) {
				return
			}
			seg, err := l.spill.Next()
			if err != nil {
				l.m.Error(metrics.LedgerOpSpill)
				l.log.Error("spill file could not be closed for replay", "error", err.Error())
				return
			}
			if seg == nil {
				return
			}
			rows, bad, err := l.spill.Read(seg)
			if err != nil {
				l.m.Error(metrics.LedgerOpSpill)
				l.log.Error("spill file cannot be read; set aside for an operator", "file", seg.path, "error", err.Error())
				if err := l.spill.SetAside(seg); err != nil {
					l.log.Error("spill file could not be set aside", "file", seg.path, "error", err.Error())
				}
				continue
			}
			if bad > 0 {
				l.m.Rows(metrics.LedgerDropped, bad)
				l.log.Warn("spill file lines could not be read back (a row cut short by a crash, or damage)", "file", seg.path, "lines", bad)
			}
			l.replay = &replayState{seg: seg, rows: rows}
		}
		rp := l.replay
		if rp.next < len(rp.rows) {
			if !l.ready(ctx) {
				return
			}
			chunk := rp.rows[rp.next:min(rp.next+l.opts.BatchRows, len(rp.rows))]
			if err := l.copy(ctx, chunk); err != nil {
				l.failed(metrics.LedgerOpReplay, err)
				return
			}
			l.ok()
			l.m.Rows(metrics.LedgerReplayed, len(chunk))
			rp.next += len(chunk)
			continue
		}
		if err := l.spill.Remove(rp.seg); err != nil {
			// Its rows are committed; replaying them again is harmless.
			l.m.Error(metrics.LedgerOpSpill)
			l.log.Error("replayed spill file could not be removed", "file", rp.seg.path, "error", err.Error())
		}
		l.replay = nil
	}
}

// ready reports whether Postgres may be tried now: not while backing off
// after a failure, and only once the schema is migrated.
func (l *Ledger) ready(ctx context.Context) bool {
	if l.down && time.Now().Before(l.downUntil) {
		return false
	}
	if l.migrated {
		return true
	}
	mctx, cancel := context.WithTimeout(ctx, l.opts.WriteTimeout)
	defer cancel()
	applied, err := Migrate(mctx, l.pool)
	if err != nil {
		l.failed(metrics.LedgerOpMigrate, err)
		return false
	}
	if len(applied) > 0 {
		l.log.Info("ledger schema migrated", "versions", applied)
	}
	l.migrated = true
	l.ok()
	return true
}

func (l *Ledger) failed(op string, err error) {
	l.m.Error(op)
	l.m.PostgresUp(false)
	l.backoff = min(max(2*l.backoff, retryMin), retryMax)
	l.downUntil = time.Now().Add(l.backoff)
	if !l.down {
		l.log.Warn("Postgres is not taking ledger rows; spilling them to disk until it does", "op", op, "error", err.Error())
	} else {
		l.log.Debug("Postgres still not taking ledger rows", "op", op, "error", err.Error(), "retry_in", l.backoff.String())
	}
	l.down = true
}

func (l *Ledger) ok() {
	if l.down {
		l.log.Info("Postgres takes ledger rows again; replaying the spilled ones", "spill_bytes", l.spill.Bytes())
	}
	l.down, l.backoff = false, 0
	l.m.PostgresUp(true)
}

const createStaging = `CREATE TEMP TABLE IF NOT EXISTS ledger_staging (LIKE ledger INCLUDING DEFAULTS) ON COMMIT DELETE ROWS`

const insertStaged = `INSERT INTO ledger SELECT * FROM ledger_staging ON CONFLICT (id) DO NOTHING`

var columns = []string{
	"id", "at", "request_id", "key_name", "team", "api", "model", "upstream", "status", "stream",
	"usage_known", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
	"cost_usd", "savings_usd", "cache_hit", "latency_ms", "ttft_ms", "attempts", "fallback_path",
}

// copy commits rows in one transaction: COPY into the session's staging
// table, then insert what is not there yet. A row already stored (a batch
// whose commit was answered too late, a replay) is skipped.
func (l *Ledger) copy(ctx context.Context, rows []Row) error {
	ctx, cancel := context.WithTimeout(ctx, l.opts.WriteTimeout)
	defer cancel()
	return pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, createStaging); err != nil {
			return fmt.Errorf("staging table: %w", err)
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"ledger_staging"}, columns, pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
			r := &rows[i]
			var ttft any
			if r.TTFT > 0 {
				ttft = ms(r.TTFT)
			}
			path := r.FallbackPath
			if path == nil {
				path = []string{}
			}
			return []any{text(r.ID), r.Time, text(r.RequestID), text(r.KeyName), text(r.Team), text(r.API), text(r.Model), text(r.Upstream), int32(r.Status), r.Stream,
				r.UsageKnown, r.PromptTokens, r.CompletionTokens, r.CachedTokens, r.ReasoningTokens,
				r.CostUSD, r.SavingsUSD, r.CacheHit, ms(r.Latency), ttft, int32(r.Attempts), path}, nil
		}))
		if err != nil {
			return fmt.Errorf("copy: %w", err)
		}
		if _, err := tx.Exec(ctx, insertStaged); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		return nil
	})
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// text is s as Postgres takes it: valid UTF-8 without NUL bytes. A row
// Postgres refused would be retried for ever and hold every row after it
// in the spill file; names come from the config, which may hold either.
func text(s string) string {
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return s
}
