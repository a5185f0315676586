package ledger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Lookup returns the newest committed row with the request id (a client
// may reuse an id; each of its requests has a row of its own). Rows still
// queued or spilled are not found until they are committed.
func (l *Ledger) Lookup(ctx context.Context, requestID string) (Row, bool, error) {
	return l.lookup(ctx, `request_id = $1`, requestID)
}

// LookupFor is Lookup among the rows of one key name ("" for the plain
// client_keys), leaving out requests refused for want of a valid key: a
// client picks its own X-Request-Id, so another client's rows with the same
// id, or a stranger's 401, must not hide or stand in for the key's own.
func (l *Ledger) LookupFor(ctx context.Context, requestID, keyName string) (Row, bool, error) {
	return l.lookup(ctx, `request_id = $1 AND key_name = $2 AND status <> 401`, requestID, keyName)
}

func (l *Ledger) lookup(ctx context.Context, where string, args ...any) (Row, bool, error) {
	rows, err := l.pool.Query(ctx, `SELECT id, at, request_id, key_name, team, api, model, upstream, status, stream,
		usage_known, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_usd, savings_usd,
		cache_hit, latency_ms, ttft_ms, attempts, fallback_path
		FROM ledger WHERE `+where+` ORDER BY at DESC, id LIMIT 1`, args...)
	if err != nil {
		return Row{}, false, fmt.Errorf("ledger lookup: %w", err)
	}
	r, err := pgx.CollectOneRow(rows, func(row pgx.CollectableRow) (Row, error) {
		var r Row
		var status, attempts int32
		var latency float64
		var ttft *float64
		err := row.Scan(&r.ID, &r.Time, &r.RequestID, &r.KeyName, &r.Team, &r.API, &r.Model, &r.Upstream, &status, &r.Stream,
			&r.UsageKnown, &r.PromptTokens, &r.CompletionTokens, &r.CachedTokens, &r.ReasoningTokens, &r.CostUSD, &r.SavingsUSD,
			&r.CacheHit, &latency, &ttft, &attempts, &r.FallbackPath)
		r.Status, r.Attempts = int(status), int(attempts)
		r.Latency = time.Duration(latency * 1e6)
		if ttft != nil {
			r.TTFT = time.Duration(*ttft * 1e6)
		}
		if len(r.FallbackPath) == 0 {
			r.FallbackPath = nil
		}
		return r, err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return Row{}, false, nil
	}
	if err != nil {
		return Row{}, false, fmt.Errorf("ledger lookup: %w", err)
	}
	return r, true, nil
}

// SpendFilter selects the rows Spend sums; empty fields select all.
type SpendFilter struct {
	Team, Key string
	// From is inclusive, To exclusive.
	From, To time.Time
}

// Spend is what the selected requests cost and used.
type Spend struct {
	Requests         int64
	PromptTokens     int64
	CompletionTokens int64
	CostUSD          float64
	SavingsUSD       float64
}

// Spend sums the committed rows that f selects (rows still queued or
// spilled are not in it yet).
func (l *Ledger) Spend(ctx context.Context, f SpendFilter) (Spend, error) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.Team != "" {
		add("team = $%d", f.Team)
	}
	if f.Key != "" {
		add("key_name = $%d", f.Key)
	}
	if !f.From.IsZero() {
		add("at >= $%d", f.From)
	}
	if !f.To.IsZero() {
		add("at < $%d", f.To)
	}
	q := `SELECT count(*), coalesce(sum(prompt_tokens), 0)::bigint, coalesce(sum(completion_tokens), 0)::bigint,
		coalesce(sum(cost_usd), 0), coalesce(sum(savings_usd), 0) FROM ledger`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	var s Spend
	if err := l.pool.QueryRow(ctx, q, args...).Scan(&s.Requests, &s.PromptTokens, &s.CompletionTokens, &s.CostUSD, &s.SavingsUSD); err != nil {
		return Spend{}, fmt.Errorf("ledger spend: %w", err)
	}
	return s, nil
}
