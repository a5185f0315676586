package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/budget"
	"github.com/relaygate/relaygate/service/internal/metrics"
)

// keyPolicy is what a named client key (config keys:) may do, built once
// per config. Keys of the plain client_keys list have none: they have no
// name (exchange.keyName and team stay empty), no allow-list and only the
// global rate_limit, and are not counted by key.
type keyPolicy struct {
	name, team string
	// models and teamModels are the allow-lists; nil allows every model.
	models, teamModels []string
	// sub is what Redis charges; nil when neither the key nor its team
	// has limits or a budget, so its requests cost no Redis round trip.
	sub    *budget.Subject
	closed bool // on_redis_error: closed
	series *metrics.KeySeries
	// keyLeft and teamLeft are the remaining-budget gauges, nil for a
	// scope without a budget. Made at the first answer from Redis, so no
	// series says 0 before anything is known.
	keyLeft, teamLeft func() prometheus.Gauge
	// modelsJSON is GET /v1/models for the key: the models its
	// allow-lists let it use; nil without allow-lists.
	modelsJSON []byte
}

// addKeys appends the named keys' sums to st.keys, each with its policy
// in st.owners at the same index.
func (s *Server) addKeys(st *state, cfg *config.Config) {
	st.owners = make([]*keyPolicy, len(st.keys), len(st.keys)+len(cfg.Keys))
	for _, sum := range st.keys {
		st.clientIDs = append(st.clientIDs, hex.EncodeToString(sum[:8]))
	}
	for i := range cfg.Keys {
		k := &cfg.Keys[i]
		p := &keyPolicy{name: k.Name, team: k.Team, models: k.Models, closed: k.OnRedisError == config.OnRedisErrorClosed,
			series: s.metrics.Key(k.Team, k.Name)}
		if len(p.models) == 0 {
			p.models = nil
		}
		team := cfg.Team(k.Team)
		if team != nil && len(team.Models) > 0 {
			p.teamModels = team.Models
		}
		if p.models != nil || p.teamModels != nil {
			p.modelsJSON = allowedModelsJSON(cfg, st, p)
		}
		if cfg.Limited(k) {
			p.sub = &budget.Subject{Key: scopeOf(k.Name, k.RPM, k.TPM, k.Budget)}
			if team != nil {
				ts := scopeOf(team.Name, team.RPM, team.TPM, team.Budget)
				p.sub.Team = &ts
			}
			if k.Budget != nil {
				p.keyLeft = sync.OnceValue(func() prometheus.Gauge { return s.metrics.BudgetRemaining(metrics.ScopeKey, k.Name) })
			}
			if team != nil && team.Budget != nil {
				p.teamLeft = sync.OnceValue(func() prometheus.Gauge { return s.metrics.BudgetRemaining(metrics.ScopeTeam, team.Name) })
			}
			st.limitedKeys = true
		}
		for _, sum := range k.Sums() {
			st.keys = append(st.keys, sum)
			st.owners = append(st.owners, p)
			// By name, so that a rotated key keeps its rate limit and
			// cache ("n." cannot start a hex id; a cache scope has no ':').
			st.clientIDs = append(st.clientIDs, "n."+k.Name)
		}
		st.named = append(st.named, p)
	}
}

// forgetKeys deletes the series of the named keys, and the budget series
// of the keys and teams, that prev had and st does not.
func (s *Server) forgetKeys(prev, st *state) {
	type pair struct{ team, key string }
	kept := map[pair]bool{}
	budgets := map[string]bool{}
	for _, p := range st.named {
		kept[pair{p.team, p.name}] = true
		if p.keyLeft != nil {
			budgets[metrics.ScopeKey+"\x00"+p.name] = true
		}
		if p.teamLeft != nil {
			budgets[metrics.ScopeTeam+"\x00"+p.team] = true
		}
	}
	for _, p := range prev.named {
		if !kept[pair{p.team, p.name}] {
			s.metrics.KeyRemoved(p.team, p.name)
		}
		if p.keyLeft != nil && !budgets[metrics.ScopeKey+"\x00"+p.name] {
			s.metrics.BudgetRemoved(metrics.ScopeKey, p.name)
		}
		if p.teamLeft != nil && !budgets[metrics.ScopeTeam+"\x00"+p.team] {
			s.metrics.BudgetRemoved(metrics.ScopeTeam, p.team)
		}
	}
}

func scopeOf(name string, rpm, tpm int, b *config.Budget) budget.Scope {
	sc := budget.Scope{Name: name, Limits: budget.Limits{RPM: rpm, TPM: tpm}}
	if b != nil {
		sc.Budget, sc.Period = budget.ToMicros(b.USD), b.Period
	}
	return sc
}

// refusedModel says which allow-list refuses model: "" when none does.
func (p *keyPolicy) refusedModel(model string) (by string, list []string) {
	if p.models != nil && !slices.Contains(p.models, model) {
		return "key", p.models
	}
	if p.teamModels != nil && !slices.Contains(p.teamModels, model) {
		return "team", p.teamModels
	}
	return "", nil
}

// enforceKey applies the named key's allow-list, limits and budget to a
// request for model; when it refuses, the client has been answered.
func (x *exchange) enforceKey(model string) bool {
	p := x.pol
	if by, list := p.refusedModel(model); by != "" {
		p.series.Refused(metrics.RefusedModel)
		who := "Key " + p.name
		if by == "team" {
			who = "Team " + p.team + " (of key " + p.name + ")"
		}
		x.fail(&apiError{Status: http.StatusForbidden, Type: typePermission, Code: "model_not_allowed", Param: "model",
			Message: fmt.Sprintf("%s may not use model %q; it may use: %s.", who, model, strings.Join(list, ", "))})
		return false
	}
	if p.sub == nil || x.s.budgets == nil {
		return true
	}
	d, err := x.s.budgets.Admit(x.r.Context(), p.sub)
	if err != nil {
		if x.r.Context().Err() != nil {
			x.status, x.errMsg = 499, "client went away"
			return false
		}
		if !p.closed {
			p.series.RedisServed.Inc()
			return true
		}
		p.series.RedisRefused.Inc()
		p.series.Refused(metrics.RefusedRedisError)
		x.w.Header().Set("Retry-After", "1")
		x.fail(&apiError{Status: http.StatusServiceUnavailable, Type: typeServer, Code: "budget_unavailable",
			Message: fmt.Sprintf("The limits and budget of key %s cannot be checked now (Redis is unreachable) and the key is set to refuse requests then (on_redis_error: closed). Retry shortly.", p.name)})
		return false
	}
	p.setRemaining(d.KeySpent, d.TeamSpent)
	if d.Allowed {
		return true
	}
	secs := retryAfterSeconds(d.RetryAfter)
	if d.Reason == budget.ReasonBudget {
		// Up to a month away: not capped at retryAfterSeconds' day.
		secs = max(int((d.RetryAfter+time.Second-1)/time.Second), 1)
	}
	x.w.Header().Set("Retry-After", strconv.Itoa(secs))
	name := p.name
	sc := p.sub.Key
	spent := d.KeySpent
	if d.Scope == "team" {
		name, sc, spent = p.team, *p.sub.Team, d.TeamSpent
	}
	if d.Reason == budget.ReasonBudget {
		p.series.Refused(metrics.RefusedBudget)
		x.fail(&apiError{Status: http.StatusTooManyRequests, Type: typeQuota, Code: "budget_exceeded",
			Message: fmt.Sprintf("The budget of %s %s is spent: $%.2f of $%.2f this %s (UTC). It resets at %s; retry after %ds.",
				d.Scope, name, budget.USD(spent), budget.USD(sc.Budget), sc.Period, d.Reset.Format(time.RFC3339), secs)})
		return false
	}
	p.series.Refused(metrics.RefusedRateLimit)
	what, limit := "requests", sc.RPM
	if d.Reason == budget.ReasonTPM {
		what, limit = "tokens", sc.TPM
	}
	x.fail(&apiError{Status: http.StatusTooManyRequests, Type: typeRateLimit, Code: "rate_limit_exceeded",
		Message: fmt.Sprintf("Rate limit reached for %s %s: %d %s per minute (%s). Retry after %ds.", d.Scope, name, limit, what, d.Reason, secs)})
	return false
}

// Error types beside errors.go's: OpenAI's for a 403 and for a spent quota.
const (
	typePermission = "permission_error"
	typeQuota      = "insufficient_quota"
)

func (p *keyPolicy) setRemaining(keySpent, teamSpent budget.Micros) {
	if p.keyLeft != nil {
		p.keyLeft().Set(budget.USD(p.sub.Key.Budget - keySpent))
	}
	if p.teamLeft != nil {
		p.teamLeft().Set(budget.USD(p.sub.Team.Budget - teamSpent))
	}
}

// chargeKey counts a finished answer's usage by key and charges its cost
// to the key's and team's spend (and its tokens to their buckets) in
// Redis. The client has its answer first: a slow Redis delays only this
// handler's return.
func (x *exchange) chargeKey(cost, ref float64, hasRef bool) {
	p := x.pol
	p.series.Prompt.Add(float64(x.prompt))
	p.series.Completion.Add(float64(x.completion))
	p.series.Spend.Add(cost)
	if !hasRef {
		ref = cost
	}
	p.series.Reference.Add(ref)
	if p.sub == nil || x.s.budgets == nil {
		return
	}
	x.flush()
	spent, err := x.s.budgets.Charge(context.WithoutCancel(x.r.Context()), p.sub, x.prompt+x.completion, budget.ToMicros(cost))
	if err != nil {
		x.s.log.Warn("spend not charged: Redis unreachable", "request_id", x.rid, "key", p.name, "team", p.team,
			"cost_usd", cost, "error", err.Error())
		p.series.RedisUncharged.Inc()
		return
	}
	p.setRemaining(spent.Key, spent.Team)
}

// matchIndex finds the key whose sum is sum, in constant time over every
// key (no early exit): its index in keys, or -1.
func matchIndex(sum [sha256.Size]byte, keys [][sha256.Size]byte) int {
	idx := -1
	for i := range keys {
		idx = subtle.ConstantTimeSelect(subtle.ConstantTimeCompare(sum[:], keys[i][:]), i, idx)
	}
	return idx
}

// allowedModelsJSON is the model list of GET /v1/models with only the
// models p may use, in the config's order.
func allowedModelsJSON(cfg *config.Config, st *state, p *keyPolicy) []byte {
	data := []json.RawMessage{}
	for i := range cfg.Models {
		if by, _ := p.refusedModel(cfg.Models[i].Name); by == "" {
			data = append(data, st.modelJSON[cfg.Models[i].Name])
		}
	}
	b, _ := json.Marshal(struct {
		Object string            `json:"object"`
		Data   []json.RawMessage `json:"data"`
	}{"list", data})
	return b
}
