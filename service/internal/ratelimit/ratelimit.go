// Package ratelimit enforces per-client requests-per-minute and
// tokens-per-minute limits, kept in Redis so that every gateway replica
// draws on the same budget.
//
// Both limits are GCRA buckets (the generic cell rate algorithm, as in
// leaky-bucket rate limiters): a client may spend its whole per-minute budget
// at once, and the budget refills continuously at the per-minute rate rather
// than at minute boundaries, so there is no boundary at which twice the limit
// gets through. Each bucket is one Redis key holding its "theoretical arrival
// time" on Redis's clock, so replicas with skewed clocks still agree.
//
// Tokens are only known once the upstream has answered, so they are recorded
// afterwards (AddTokens) and checked before the next request (Allow). A
// request that uses more than what was left puts the client in debt: it is
// refused until the debt has refilled, so over time it gets TPM and no more.
//
// github.com/go-redis/redis_rate implements the same algorithm, and fits the
// request limit, but not the token one: it refuses (and so forgets) a cost
// larger than what is left, or with AllowAtMost caps it, while tokens already
// spent must always be recorded in full. One script of our own also lets
// Allow check both limits atomically in one round trip, and take no request
// from the RPM budget when TPM refuses.
//
// Redis trouble never blocks traffic: Allow fails open, allowing the request
// and returning the error for the gateway to count, bounded by a short
// timeout and skipped entirely during a back-off (see package redisguard).
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaygate/relaygate/service/internal/redisguard"
)

// Names of the limits, as Decision.Limit reports them.
const (
	LimitRPM = "rpm"
	LimitTPM = "tpm"
)

// period is the window both limits are expressed over.
const period = time.Minute

// keyPrefix starts every rate limit key. The client id goes in braces, a
// Redis Cluster hash tag, so a client's two buckets share a slot and one
// script can touch both.
const keyPrefix = "relaygate:ratelimit:"

// Limits are per client, per minute. 0 turns a limit off.
type Limits struct {
	RPM int // requests per minute
	TPM int // tokens (prompt + completion) per minute
}

// Status is the limiter's Redis state for /health.
type Status = redisguard.Status

// Options configures New.
type Options struct {
	// URL is the Redis URL (go-redis ParseURL syntax), usually the cache's:
	// the limiter opens its own small connection pool from it, with the same
	// bounded timeouts. The password in it is never logged or returned.
	URL    string
	Limits Limits
	// Timeout bounds each Redis call; redisguard.DefaultTimeout (50ms) when zero.
	Timeout time.Duration
	// Logger gets outage and recovery lines; slog.Default when nil.
	Logger *slog.Logger
}

// Decision is Allow's answer.
type Decision struct {
	Allowed bool
	// RetryAfter is how long until the refused request would be allowed
	// (the Retry-After header); 0 when allowed.
	RetryAfter time.Duration
	// Limit names the limit Remaining counts: the one that refused, or when
	// allowed, "rpm" if requests are limited, else "tpm". Empty when no
	// limit is on or Redis could not be asked.
	Limit string
	// Remaining is what is left of Limit after this request: requests for
	// "rpm", tokens for "tpm". 0 when refused.
	Remaining int
}

// Limiter applies Limits to clients. It is safe for concurrent use.
type Limiter struct {
	rdb    *redis.Client
	guard  *redisguard.Guard
	limits Limits
}

// New returns a Limiter for the Redis at opts.URL. It does not contact Redis.
func New(opts Options) (*Limiter, error) {
	if opts.Limits.RPM < 0 || opts.Limits.TPM < 0 {
		return nil, fmt.Errorf("ratelimit: limits must not be negative, got rpm %d, tpm %d",
			opts.Limits.RPM, opts.Limits.TPM)
	}
	rdb, err := redisguard.NewClient(opts.URL, opts.Timeout)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	return &Limiter{
		rdb: rdb,
		guard: redisguard.New(redisguard.Options{
			Name: "ratelimit", Timeout: opts.Timeout, Logger: opts.Logger,
		}),
		limits: opts.Limits,
	}, nil
}

// Allow is called before a request is forwarded. It refuses the request if
// the client's token budget is spent (recorded tokens reached TPM), and
// otherwise takes one request from its RPM budget, refusing it if none is left.
// client is an opaque, non-secret id (the gateway passes a hash of the key).
//
// If Redis fails or is being backed off from, the request is allowed and the
// error returned: a rate limiter must not become the outage.
func (l *Limiter) Allow(ctx context.Context, client string) (Decision, error) {
	if l.limits.RPM == 0 && l.limits.TPM == 0 {
		return Decision{Allowed: true}, nil
	}
	var reply []any
	err := l.guard.Do(ctx, func(ctx context.Context) error {
		var err error
		reply, err = allowScript.Run(ctx, l.rdb,
			[]string{bucketKey(client, LimitRPM), bucketKey(client, LimitTPM)},
			l.limits.RPM, l.limits.TPM, period.Microseconds(),
		).Slice()
		return err
	})
	if err != nil {
		return Decision{Allowed: true}, fmt.Errorf("rate limit check (allowing the request): %w", err)
	}
	d, err := parseDecision(reply)
	if err != nil {
		return Decision{Allowed: true}, fmt.Errorf("rate limit check (allowing the request): %w", err)
	}
	return d, nil
}

// AddTokens records the tokens a finished request used (the upstream's
// usage.total_tokens) against the client's TPM budget. It never refuses:
// tokens spent beyond the budget become debt that later requests wait out.
func (l *Limiter) AddTokens(ctx context.Context, client string, tokens int) error {
	if l.limits.TPM == 0 || tokens <= 0 {
		return nil
	}
	err := l.guard.Do(ctx, func(ctx context.Context) error {
		return addTokensScript.Run(ctx, l.rdb,
			[]string{bucketKey(client, LimitTPM)},
			l.limits.TPM, period.Microseconds(), tokens,
		).Err()
	})
	if err != nil {
		return fmt.Errorf("rate limit: record %d tokens: %w", tokens, err)
	}
	return nil
}

// Status reports whether Redis answered the most recent calls.
func (l *Limiter) Status() Status { return l.guard.Status() }

// Close releases the Redis connections.
func (l *Limiter) Close() error {
	if err := l.rdb.Close(); err != nil {
		return fmt.Errorf("ratelimit close: %w", err)
	}
	return nil
}

func bucketKey(client, limit string) string {
	return keyPrefix + "{" + client + "}:" + limit
}

// parseDecision reads allowScript's reply: {allowed 0|1, limit, retry after
// in µs, remaining}.
func parseDecision(reply []any) (Decision, error) {
	if len(reply) != 4 {
		return Decision{}, fmt.Errorf("unexpected script reply %v", reply)
	}
	allowed, ok1 := reply[0].(int64)
	limit, ok2 := reply[1].(string)
	retryUS, ok3 := reply[2].(int64)
	remaining, ok4 := reply[3].(int64)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return Decision{}, errors.New("unexpected script reply types")
	}
	return Decision{
		Allowed:    allowed == 1,
		RetryAfter: time.Duration(retryUS) * time.Microsecond,
		Limit:      limit,
		Remaining:  int(remaining),
	}, nil
}

// Both scripts keep a bucket as its theoretical arrival time (TAT) in
// microseconds on Redis's clock: the moment the bucket would be full again.
// A bucket of `limit` units per period refills one unit every
// interval = period/limit; TAT - now is how much of the period is spent.
// Keys expire when the bucket is full again, so idle clients cost nothing.
// Redis < 5 needs replicate_commands to write after reading TIME; newer
// versions always replicate effects, and the call is a no-op there.

// allowScript: KEYS = rpm bucket, tpm bucket; ARGV = rpm, tpm, period µs.
// Checks TPM first, without writing, so a refused request costs no RPM.
var allowScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rpm, tpm, period = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local function tat(key)
  local v = tonumber(redis.call('GET', key))
  if v == nil or v < now then return now end
  return v
end

local tokens_left = 0
if tpm > 0 then
  local interval = period / tpm
  local left = period - (tat(KEYS[2]) - now)
  if left < interval then
    return {0, 'tpm', math.ceil(interval - left), 0}
  end
  tokens_left = math.floor(left / interval)
end

if rpm > 0 then
  local interval = period / rpm
  local new_tat = tat(KEYS[1]) + interval
  local spent = new_tat - now
  if spent > period then
    return {0, 'rpm', math.ceil(spent - period), 0}
  end
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(spent / 1000))
  return {1, 'rpm', 0, math.floor((period - spent) / interval)}
end
return {1, 'tpm', 0, tokens_left}
`)

// addTokensScript: KEYS = tpm bucket; ARGV = tpm, period µs, tokens.
var addTokensScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tpm, period, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local v = tonumber(redis.call('GET', KEYS[1]))
if v == nil or v < now then v = now end
local new_tat = v + tokens * (period / tpm)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return 1
`)
