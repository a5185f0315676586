package metrics

import "github.com/prometheus/client_golang/prometheus"

// Refusal reasons of relaygate_refusals_total.
const (
	RefusedModel      = "model_not_allowed"
	RefusedBudget     = "budget_exceeded"
	RefusedRateLimit  = "rate_limited"
	RefusedRedisError = "redis_unavailable"
)

// Budget scopes of relaygate_budget_remaining_usd.
const (
	ScopeKey  = "key"
	ScopeTeam = "team"
)

// keyMetrics are the series by named key (config keys:) and its team.
// Both labels come from the config only, never from a request.
type keyMetrics struct {
	requests, spend, reference *prometheus.CounterVec
	tokens                     *prometheus.CounterVec
	refusals, lateRefusals     *prometheus.CounterVec
	redisErrors                *prometheus.CounterVec
	remaining                  *prometheus.GaugeVec
}

func newKeyMetrics(register func(prometheus.Collector)) *keyMetrics {
	k := &keyMetrics{
		requests: counterVec("relaygate_key_requests_total",
			"Requests of each named client key (config keys:), by team and key name, whatever their answer.",
			"team", "key"),
		tokens: counterVec("relaygate_key_tokens_total",
			"Tokens the upstreams reported for each named key's answers, by team, key and kind (prompt, completion).",
			"team", "key", "kind"),
		spend: counterVec("relaygate_spend_usd_total",
			"What each named key's answers cost at the configured prices, in US dollars, by team and key: what its budget is charged.",
			"team", "key"),
		reference: counterVec("relaygate_key_reference_cost_usd_total",
			"What each named key's answers would have cost at their models' reference prices, in US dollars, by team and key (answers of models without a reference price count at what they cost).",
			"team", "key"),
		refusals: counterVec("relaygate_refusals_total",
			"Requests of named keys the gateway refused, by reason (model_not_allowed, budget_exceeded, rate_limited, redis_unavailable), team and key.",
			"reason", "team", "key"),
		lateRefusals: counterVec("relaygate_refusals_late_total",
			"Refusals of named keys (of relaygate_refusals_total) whose verdict came from Redis after the upstream call had started (admission: overlap): the call was cancelled and not charged, by reason, team and key.",
			"reason", "team", "key"),
		redisErrors: counterVec("relaygate_key_redis_errors_total",
			"Requests of named keys whose limits and budget Redis could not check, by team, key and what on_redis_error made of them (served, refused), or, for answers whose cost Redis could not record, uncharged.",
			"team", "key", "action"),
		remaining: gaugeVec("relaygate_budget_remaining_usd",
			"What is left of a key's or team's budget this period, in US dollars, by scope (key, team) and name, as this replica last read it from Redis; negative when spent beyond it by requests in flight.",
			"scope", "name"),
	}
	for _, c := range []prometheus.Collector{k.requests, k.tokens, k.spend, k.reference, k.refusals, k.lateRefusals, k.redisErrors, k.remaining} {
		register(c)
	}
	return k
}

// KeySeries are one named key's series, resolved once when a config is
// applied, so a request records them without hashing labels.
type KeySeries struct {
	Requests, Prompt, Completion, Spend, Reference prometheus.Counter
	refusals, late                                 map[string]prometheus.Counter
	// RedisServed and RedisRefused count requests Redis could not check
	// (on_redis_error open and closed), RedisUncharged answers whose cost
	// it could not record.
	RedisServed, RedisRefused, RedisUncharged prometheus.Counter
}

// Key returns the series of the named key key of team team ("" for none).
func (m *Metrics) Key(team, key string) *KeySeries {
	k := m.keys
	s := &KeySeries{
		Requests:       k.requests.WithLabelValues(team, key),
		Prompt:         k.tokens.WithLabelValues(team, key, "prompt"),
		Completion:     k.tokens.WithLabelValues(team, key, "completion"),
		Spend:          k.spend.WithLabelValues(team, key),
		Reference:      k.reference.WithLabelValues(team, key),
		RedisServed:    k.redisErrors.WithLabelValues(team, key, "served"),
		RedisRefused:   k.redisErrors.WithLabelValues(team, key, "refused"),
		RedisUncharged: k.redisErrors.WithLabelValues(team, key, "uncharged"),
		refusals:       map[string]prometheus.Counter{},
		late:           map[string]prometheus.Counter{},
	}
	for _, r := range []string{RefusedModel, RefusedBudget, RefusedRateLimit, RefusedRedisError} {
		s.refusals[r] = k.refusals.WithLabelValues(r, team, key)
	}
	for _, r := range []string{RefusedBudget, RefusedRateLimit, RefusedRedisError} {
		s.late[r] = k.lateRefusals.WithLabelValues(r, team, key)
	}
	return s
}

// Refused counts a refusal of the key for reason (one of the Refused
// constants).
func (s *KeySeries) Refused(reason string) { s.refusals[reason].Inc() }

// RefusedLate counts a refusal (already counted by Refused) whose verdict
// came after the upstream call had started; reason is not RefusedModel.
func (s *KeySeries) RefusedLate(reason string) { s.late[reason].Inc() }

// BudgetRemaining is the remaining-budget gauge of a key or team.
func (m *Metrics) BudgetRemaining(scope, name string) prometheus.Gauge {
	return m.keys.remaining.WithLabelValues(scope, name)
}

// KeyRemoved deletes the series of a named key a reload removed (or moved
// to another team), so they do not linger with their last values.
func (m *Metrics) KeyRemoved(team, key string) {
	k := m.keys
	l := prometheus.Labels{"team": team, "key": key}
	for _, v := range []*prometheus.CounterVec{k.requests, k.tokens, k.spend, k.reference, k.refusals, k.lateRefusals, k.redisErrors} {
		v.DeletePartialMatch(l)
	}
	k.remaining.Delete(prometheus.Labels{"scope": ScopeKey, "name": key})
}

// BudgetRemoved deletes the remaining-budget series of a key or team
// whose budget a reload removed.
func (m *Metrics) BudgetRemoved(scope, name string) {
	m.keys.remaining.Delete(prometheus.Labels{"scope": scope, "name": name})
}
