// Package budget enforces the limits and budgets of named client keys and
// their teams (config keys:, teams:), kept in Redis so that every gateway
// replica draws on the same ones.
//
// Requests and tokens per minute are GCRA buckets, as in package
// ratelimit: a key's and its team's buckets are checked, and a request
// taken from both, by one script in one round trip (Admit). Spend is an
// integer of micro-dollars per scope and calendar period (UTC day and
// month), raised with INCRBY once an answer's cost is known (Charge), in
// the same round trip as its tokens. Admit refuses a request once the
// spend has reached the budget; requests admitted before that may still
// finish and be charged, so the spend overshoots the budget by at most
// what the requests in flight at that moment cost.
//
// Every key of one team shares a Redis Cluster hash tag ({t:TEAM}, or
// {k:KEY} without a team), so one script may touch a key's and its team's
// counters. Spend keys expire RetainAfter their period's end, so
// /admin/spend can answer for the previous periods meanwhile.
//
// Redis calls run under a redisguard.Guard: a short timeout, then a
// back-off during which calls fail at once. What a failure means for the
// request (serve or refuse) is the caller's choice (on_redis_error).
package budget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/redisguard"
)

// minute is the window of RPM and TPM.
const minute = time.Minute

// RetainAfter is how long a period's spend stays in Redis after the period ends.
const RetainAfter = 35 * 24 * time.Hour

// Micros is an amount of US dollars in millionths, as Redis stores spend.
type Micros = int64

// ToMicros rounds dollars to micro-dollars.
func ToMicros(usd float64) Micros { return Micros(math.Round(usd * 1e6)) }

// USD is m in dollars.
func USD(m Micros) float64 { return float64(m) / 1e6 }

// Limits of one scope; zero turns each off.
type Limits struct {
	RPM, TPM int
	Budget   Micros
	Period   string // config.PeriodDay or PeriodMonth; set with Budget
}

// Scope is a key or a team with its limits.
type Scope struct {
	Name string
	Limits
}

// Subject is what one request is charged to: its key and its key's team.
type Subject struct {
	Key  Scope
	Team *Scope // nil: the key has no team
}

// tag is the subject's Redis Cluster hash tag.
func (s *Subject) tag() string {
	if s.Team != nil {
		return "t:" + s.Team.Name
	}
	return "k:" + s.Key.Name
}

const prefix = "relaygate:budget:"

// counter is the Redis key of one of the scope's counters.
func (s *Subject) counter(scope, name, what string) string {
	return prefix + "{" + s.tag() + "}:" + scope + ":" + name + ":" + what
}

// SpendKey is the Redis key of a scope's spend in the period holding t.
// scope is "key" or "team"; name the key's or team's name.
func (s *Subject) SpendKey(scope, period string, t time.Time) string {
	name := s.Key.Name
	if scope == "team" && s.Team != nil {
		name = s.Team.Name
	}
	return s.counter(scope, name, "spend:"+PeriodID(period, t))
}

// PeriodID names the period holding t: d2026-12-03 or m2026-12.
func PeriodID(period string, t time.Time) string {
	t = t.UTC()
	if period == config.PeriodDay {
		return "d" + t.Format("2006-01-02")
	}
	return "m" + t.Format("2006-01")
}

// Bounds are the start and end of the period holding t, in UTC.
func Bounds(period string, t time.Time) (start, end time.Time) {
	t = t.UTC()
	if period == config.PeriodDay {
		start = time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 0, 1)
	}
	start = time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	return start, start.AddDate(0, 1, 0)
}

// Options configures New.
type Options struct {
	// URL is the Redis URL, usually the cache's.
	URL string
	// Timeout bounds each Redis call; redisguard.DefaultTimeout when zero.
	Timeout time.Duration
	Logger  *slog.Logger
	// Now is the clock periods are read from; time.Now when nil.
	Now func() time.Time
}

// Enforcer admits and charges requests. It is safe for concurrent use.
type Enforcer struct {
	rdb   *redis.Client
	guard *redisguard.Guard
	now   func() time.Time
}

// New returns an Enforcer for the Redis at opts.URL; it does not contact Redis.
func New(opts Options) (*Enforcer, error) {
	rdb, err := redisguard.NewClient(opts.URL, opts.Timeout)
	if err != nil {
		return nil, fmt.Errorf("budget: %w", err)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &Enforcer{rdb: rdb, now: now,
		guard: redisguard.New(redisguard.Options{Name: "budget", Timeout: opts.Timeout, Logger: opts.Logger})}, nil
}

// Reasons a request is refused.
const (
	ReasonBudget = "budget"
	ReasonRPM    = "rpm"
	ReasonTPM    = "tpm"
)

// Decision is Admit's answer.
type Decision struct {
	Allowed bool
	// Reason (ReasonBudget, ReasonRPM, ReasonTPM) and Scope ("key",
	// "team") say what refused; empty when allowed.
	Reason, Scope string
	// RetryAfter is when the refused request may be allowed: the end of
	// a budget's period, or when the bucket has refilled enough.
	RetryAfter time.Duration
	// Reset is the end of the refusing budget's period.
	Reset time.Time
	// KeySpent and TeamSpent are the spend of the scopes' budget periods
	// (0 for a scope without a budget).
	KeySpent, TeamSpent Micros
}

// ErrRedis wraps every failure to reach Redis (or to read its answer).
var ErrRedis = errors.New("budget: redis")

// Admit checks a request of sub against its budgets and token buckets and
// takes it from its request buckets, all or nothing.
func (e *Enforcer) Admit(ctx context.Context, sub *Subject) (Decision, error) {
	now := e.now()
	team := sub.Team
	if team == nil {
		team = &Scope{}
	}
	keys := []string{
		sub.counter("key", sub.Key.Name, "rpm"), sub.counter("key", sub.Key.Name, "tpm"), sub.SpendKey("key", sub.Key.Period, now),
		sub.counter("team", team.Name, "rpm"), sub.counter("team", team.Name, "tpm"), sub.SpendKey("team", team.Period, now),
	}
	var reply []any
	err := e.guard.Do(ctx, func(ctx context.Context) error {
		var err error
		reply, err = admitScript.Run(ctx, e.rdb, keys,
			sub.Key.RPM, sub.Key.TPM, sub.Key.Budget, team.RPM, team.TPM, team.Budget, minute.Microseconds()).Slice()
		return err
	})
	if err != nil {
		return Decision{}, fmt.Errorf("%w: admit: %w", ErrRedis, err)
	}
	if len(reply) != 6 {
		return Decision{}, fmt.Errorf("%w: admit: unexpected reply %v", ErrRedis, reply)
	}
	allowed, _ := reply[0].(int64)
	reason, _ := reply[1].(string)
	scope, _ := reply[2].(string)
	retryUS, _ := reply[3].(int64)
	d := Decision{Allowed: allowed == 1, Reason: reason, Scope: scope}
	d.KeySpent, _ = reply[4].(int64)
	d.TeamSpent, _ = reply[5].(int64)
	d.RetryAfter = time.Duration(retryUS) * time.Microsecond
	if reason == ReasonBudget {
		period := sub.Key.Period
		if scope == "team" {
			period = team.Period
		}
		_, d.Reset = Bounds(period, now)
		d.RetryAfter = d.Reset.Sub(now)
	}
	return d, nil
}

// Spent is a subject's spend after a charge, in its budget periods.
type Spent struct {
	Key, Team Micros
}

// Charge records what a finished request cost and the tokens it used. It
// never refuses: spend beyond a budget is what later requests are refused
// for. It returns the spend of the scopes' budget periods after it.
func (e *Enforcer) Charge(ctx context.Context, sub *Subject, tokens int, cost Micros) (Spent, error) {
	now := e.now()
	hasTeam := 0
	team := sub.Team
	if team != nil {
		hasTeam = 1
	} else {
		team = &Scope{}
	}
	_, dayEnd := Bounds(config.PeriodDay, now)
	_, monthEnd := Bounds(config.PeriodMonth, now)
	keys := []string{
		sub.counter("key", sub.Key.Name, "tpm"), sub.counter("team", team.Name, "tpm"),
		sub.SpendKey("key", config.PeriodDay, now), sub.SpendKey("key", config.PeriodMonth, now),
		sub.SpendKey("team", config.PeriodDay, now), sub.SpendKey("team", config.PeriodMonth, now),
	}
	var reply []any
	err := e.guard.Do(ctx, func(ctx context.Context) error {
		var err error
		reply, err = chargeScript.Run(ctx, e.rdb, keys,
			sub.Key.TPM, team.TPM, minute.Microseconds(), max(tokens, 0), max(cost, 0),
			dayEnd.Add(RetainAfter).Unix(), monthEnd.Add(RetainAfter).Unix(), hasTeam).Slice()
		return err
	})
	if err != nil {
		return Spent{}, fmt.Errorf("%w: charge $%.6f: %w", ErrRedis, USD(cost), err)
	}
	if len(reply) != 4 {
		return Spent{}, fmt.Errorf("%w: charge: unexpected reply %v", ErrRedis, reply)
	}
	pick := func(period string, day, month any) Micros {
		v := month
		if period == config.PeriodDay {
			v = day
		}
		n, _ := v.(int64)
		return n
	}
	return Spent{Key: pick(sub.Key.Period, reply[0], reply[1]), Team: pick(team.Period, reply[2], reply[3])}, nil
}

// SpendAt reads the spend of the scope ("key" or "team") of sub in the
// period holding t.
func (e *Enforcer) SpendAt(ctx context.Context, sub *Subject, scope, period string, t time.Time) (Micros, error) {
	var v int64
	err := e.guard.Do(ctx, func(ctx context.Context) error {
		var err error
		v, err = e.rdb.Get(ctx, sub.SpendKey(scope, period, t)).Int64()
		if errors.Is(err, redis.Nil) {
			v, err = 0, nil
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("%w: read spend: %w", ErrRedis, err)
	}
	return v, nil
}

// Now is the enforcer's clock.
func (e *Enforcer) Now() time.Time { return e.now() }

// Status reports whether Redis answered the most recent calls.
func (e *Enforcer) Status() redisguard.Status { return e.guard.Status() }

// Close releases the Redis connections.
func (e *Enforcer) Close() error {
	if err := e.rdb.Close(); err != nil {
		return fmt.Errorf("budget close: %w", err)
	}
	return nil
}

// admitScript: KEYS = key rpm, key tpm, key spend, team rpm, team tpm,
// team spend; ARGV = key rpm, tpm, budget µ$, team rpm, tpm, budget µ$,
// period µs. Budgets first, then token buckets, read only; then both
// request buckets, written only when both have room, so a refused request
// takes nothing. Replies {allowed, reason, scope, retry µs, key spend,
// team spend}. Buckets hold their theoretical arrival time in µs on
// Redis's clock, as in package ratelimit.
var admitScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[7])
local kspent, tspent = 0, 0
local kb, tb = tonumber(ARGV[3]), tonumber(ARGV[6])
if kb > 0 then
  kspent = tonumber(redis.call('GET', KEYS[3]) or '0')
  if kspent >= kb then return {0, 'budget', 'key', 0, kspent, 0} end
end
if tb > 0 then
  tspent = tonumber(redis.call('GET', KEYS[6]) or '0')
  if tspent >= tb then return {0, 'budget', 'team', 0, kspent, tspent} end
end
local function tat(key)
  local v = tonumber(redis.call('GET', key))
  if v == nil or v < now then return now end
  return v
end
local function tokens_short(key, limit)
  if limit <= 0 then return nil end
  local interval = period / limit
  local left = period - (tat(key) - now)
  if left < interval then return math.ceil(interval - left) end
  return nil
end
local r = tokens_short(KEYS[2], tonumber(ARGV[2]))
if r then return {0, 'tpm', 'key', r, kspent, tspent} end
r = tokens_short(KEYS[5], tonumber(ARGV[5]))
if r then return {0, 'tpm', 'team', r, kspent, tspent} end
local writes = {}
local function take(key, limit, scope)
  if limit <= 0 then return nil end
  local interval = period / limit
  local new_tat = tat(key) + interval
  local spent = new_tat - now
  if spent > period then return math.ceil(spent - period) end
  writes[#writes + 1] = {key, new_tat, spent}
  return nil
end
r = take(KEYS[1], tonumber(ARGV[1]))
if r then return {0, 'rpm', 'key', r, kspent, tspent} end
r = take(KEYS[4], tonumber(ARGV[4]))
if r then return {0, 'rpm', 'team', r, kspent, tspent} end
for _, w in ipairs(writes) do
  redis.call('SET', w[1], string.format('%.0f', w[2]), 'PX', math.max(1, math.ceil(w[3] / 1000)))
end
return {1, '', '', 0, kspent, tspent}
`)

// chargeScript: KEYS = key tpm, team tpm, key day spend, key month spend,
// team day spend, team month spend; ARGV = key tpm, team tpm, period µs,
// tokens, cost µ$, day expiry, month expiry (Unix seconds), has team.
// Replies the four spends after the charge (0 for a missing team).
var chargeScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period, tokens, cost = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local function add_tokens(key, limit)
  if limit <= 0 or tokens <= 0 then return end
  local v = tonumber(redis.call('GET', key))
  if v == nil or v < now then v = now end
  local new_tat = v + tokens * (period / limit)
  redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
end
local function add(key, expire_at)
  local v = redis.call('INCRBY', key, cost)
  redis.call('EXPIREAT', key, expire_at)
  return v
end
add_tokens(KEYS[1], tonumber(ARGV[1]))
local kd, km, td, tm = add(KEYS[3], ARGV[6]), add(KEYS[4], ARGV[7]), 0, 0
if ARGV[8] == '1' then
  add_tokens(KEYS[2], tonumber(ARGV[2]))
  td, tm = add(KEYS[5], ARGV[6]), add(KEYS[6], ARGV[7])
end
return {kd, km, td, tm}
`)
