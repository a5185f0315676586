package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	// overlap: admission: overlap, checked beside the upstream call.
	overlap bool
	// keyHold and teamHold repeat a refusal of the key or its team by
	// Redis until its Retry-After (nil without limits).
	keyHold, teamHold *scopeHold
	series            *metrics.KeySeries
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
	teamHolds := map[string]*scopeHold{}
	for i := range cfg.Keys {
		k := &cfg.Keys[i]
		p := &keyPolicy{name: k.Name, team: k.Team, models: k.Models, closed: k.OnRedisError == config.OnRedisErrorClosed,
			overlap: k.Admission != config.AdmissionStrict, series: s.metrics.Key(k.Team, k.Name)}
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
			p.keyHold = &scopeHold{}
			if team != nil {
				ts := scopeOf(team.Name, team.RPM, team.TPM, team.Budget)
				p.sub.Team = &ts
				if teamHolds[team.Name] == nil {
					teamHolds[team.Name] = &scopeHold{}
				}
				p.teamHold = teamHolds[team.Name]
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
// request for model; when it refuses, the client has been answered. A
// key with admission: overlap is only started on its Redis admission
// here (startAdmission): the verdict comes while the upstream is asked.
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
	if d, ok := p.held(x.s.budgets.Now()); ok {
		// Refused a moment ago for as long as this: neither Redis nor an
		// upstream is asked again until then.
		x.refuse(p.judge(x.r.Context(), d, nil))
		return false
	}
	if p.overlap {
		x.startAdmission()
		return true
	}
	d, err := x.s.budgets.Admit(x.r.Context(), p.sub)
	v := p.judge(x.r.Context(), d, err)
	x.admitted(d, err, v)
	if v != nil {
		x.refuse(v)
		return false
	}
	return true
}

// verdict is a refusal of a named key's request by its limits, budget or
// an unreachable Redis, ready to answer; nil is an admission.
type verdict struct {
	e          *apiError
	retryAfter string
	reason     string // a metrics.Refused* reason; "" when the client left
}

// judge turns Redis's answer to an admission into a verdict. It also
// holds the refusing scope (key or team) refused on this replica until
// the refusal's Retry-After, so the next requests are refused without
// Redis or an upstream being asked. It runs beside the handler in
// overlap mode: it touches nothing of the exchange.
func (p *keyPolicy) judge(ctx context.Context, d budget.Decision, err error) *verdict {
	if err != nil {
		if ctx.Err() != nil {
			return &verdict{e: &apiError{Status: 499, Message: "client went away"}}
		}
		if !p.closed {
			return nil
		}
		return &verdict{retryAfter: "1", reason: metrics.RefusedRedisError,
			e: &apiError{Status: http.StatusServiceUnavailable, Type: typeServer, Code: "budget_unavailable",
				Message: fmt.Sprintf("The limits and budget of key %s cannot be checked now (Redis is unreachable) and the key is set to refuse requests then (on_redis_error: closed). Retry shortly.", p.name)}}
	}
	if d.Allowed {
		return nil
	}
	p.hold(d)
	secs := retryAfterSeconds(d.RetryAfter)
	if d.Reason == budget.ReasonBudget {
		// Up to a month away: not capped at retryAfterSeconds' day.
		secs = max(int((d.RetryAfter+time.Second-1)/time.Second), 1)
	}
	v := &verdict{retryAfter: strconv.Itoa(secs)}
	name := p.name
	sc := p.sub.Key
	spent := d.KeySpent
	if d.Scope == "team" {
		name, sc, spent = p.team, *p.sub.Team, d.TeamSpent
	}
	if d.Reason == budget.ReasonBudget {
		v.reason = metrics.RefusedBudget
		v.e = &apiError{Status: http.StatusTooManyRequests, Type: typeQuota, Code: "budget_exceeded",
			Message: fmt.Sprintf("The budget of %s %s is spent: $%.2f of $%.2f this %s (UTC). It resets at %s; retry after %ds.",
				d.Scope, name, budget.USD(spent), budget.USD(sc.Budget), sc.Period, d.Reset.Format(time.RFC3339), secs)}
		return v
	}
	v.reason = metrics.RefusedRateLimit
	what, limit := "requests", sc.RPM
	if d.Reason == budget.ReasonTPM {
		what, limit = "tokens", sc.TPM
	}
	v.e = &apiError{Status: http.StatusTooManyRequests, Type: typeRateLimit, Code: "rate_limit_exceeded",
		Message: fmt.Sprintf("Rate limit reached for %s %s: %d %s per minute (%s). Retry after %ds.", d.Scope, name, limit, what, d.Reason, secs)}
	return v
}

// admitted counts what Redis said of an admission, on the handler's
// goroutine: the fail-open and fail-closed outcomes and the budgets left.
func (x *exchange) admitted(d budget.Decision, err error, v *verdict) {
	p := x.pol
	switch {
	case err == nil:
		p.setRemaining(d.KeySpent, d.TeamSpent)
	case v == nil:
		p.series.RedisServed.Inc()
	case v.reason == metrics.RefusedRedisError:
		p.series.RedisRefused.Inc()
	}
}

// refuse answers a verdict's refusal.
func (x *exchange) refuse(v *verdict) {
	if v.reason == "" {
		x.status, x.errMsg = v.e.Status, v.e.Message
		return
	}
	x.pol.series.Refused(v.reason)
	x.w.Header().Set("Retry-After", v.retryAfter)
	x.fail(v.e)
}

// scopeHold is a key's or team's refusal that this replica repeats
// without asking Redis until it runs out. It is shared by every key of a
// team, and rebuilt with the config, so new limits take effect at once.
type scopeHold struct{ p atomic.Pointer[heldRefusal] }

type heldRefusal struct {
	d budget.Decision
	// until is the end of the refusal: on the enforcer's clock for a
	// budget (its period's end), on the monotonic clock for a bucket.
	until time.Time
}

// hold remembers a refusal by Redis until its Retry-After.
func (p *keyPolicy) hold(d budget.Decision) {
	h := p.keyHold
	if d.Scope == "team" {
		h = p.teamHold
	}
	if h == nil {
		return
	}
	r := &heldRefusal{d: d, until: d.Reset}
	if d.Reason != budget.ReasonBudget {
		r.until = time.Now().Add(d.RetryAfter)
	}
	h.p.Store(r)
}

// held is the refusal that holds now for the key or its team, with its
// Retry-After as of now; ok is false when none does. bnow is the
// enforcer's clock.
func (p *keyPolicy) held(bnow time.Time) (budget.Decision, bool) {
	for _, h := range [2]*scopeHold{p.keyHold, p.teamHold} {
		if h == nil {
			continue
		}
		r := h.p.Load()
		if r == nil {
			continue
		}
		now := time.Now()
		if r.d.Reason == budget.ReasonBudget {
			now = bnow
		}
		if left := r.until.Sub(now); left > 0 {
			d := r.d
			d.RetryAfter = left
			return d, true
		}
		h.p.CompareAndSwap(r, nil)
	}
	return budget.Decision{}, false
}

// pendingAdmission is a named key's admission running in Redis while
// the upstream is asked (admission: overlap). Nothing reaches the client
// before its verdict: the exchange writes through a gate that waits for
// it. On a refusal the upstream call is cancelled, the exchange is put
// back as it was when the admission started (nothing answered, nothing
// to charge) and the refusal is answered as strict admission would.
type pendingAdmission struct {
	done   chan struct{} // closed once d, err and v are set
	d      budget.Decision
	err    error
	v      *verdict
	late   bool // the verdict refused after the upstream call had started
	called atomic.Bool
	ctx    context.Context // the upstream call's; cancelled by a refusal
	cancel context.CancelCauseFunc
	saved  exchange    // the exchange as the admission started
	header http.Header // and the client's headers then
}

// errAdmissionRefused ends an upstream call whose request the key's
// limits or budget refused meanwhile; and what the gate answers the
// writes of its answer with.
var errAdmissionRefused = errors.New("refused by the key's limits or budget")

// startAdmission starts the Redis admission of the named key's request
// and gates the client's writer on its verdict. settleAdmission, deferred
// by the handler, waits for the verdict, so the goroutine never outlives
// the request; it ends with the client's context or Redis's timeout.
func (x *exchange) startAdmission() {
	a := &pendingAdmission{done: make(chan struct{}), saved: *x, header: x.w.Header().Clone()}
	ctx := x.r.Context()
	a.ctx, a.cancel = context.WithCancelCause(ctx)
	x.adm = a
	x.w = &admissionGate{a: a, w: x.w}
	p, e := x.pol, x.s.budgets
	go func() {
		defer close(a.done)
		a.d, a.err = e.Admit(ctx, p.sub)
		a.v = p.judge(ctx, a.d, a.err)
		if a.v != nil {
			a.late = a.called.Load()
			a.cancel(errAdmissionRefused)
		}
	}()
}

// upstreamContext is the context of the request's upstream calls: one a
// refusal cancels while an overlapped admission runs.
func (x *exchange) upstreamContext() context.Context {
	if x.adm == nil {
		return x.r.Context()
	}
	x.adm.called.Store(true)
	return x.adm.ctx
}

// settleAdmission waits for an overlapped admission's verdict (the
// answer is already held back for it) and, on a refusal, answers it in
// place of whatever the upstream call made of the exchange.
func (x *exchange) settleAdmission() {
	a := x.adm
	if a == nil {
		return
	}
	<-a.done
	a.cancel(nil)
	if a.v == nil {
		x.admitted(a.d, a.err, nil)
		return
	}
	*x = a.saved
	h := x.w.Header()
	clear(h)
	for k, v := range a.header {
		h[k] = v
	}
	x.admitted(a.d, a.err, a.v)
	x.refuse(a.v)
	if a.late && a.v.reason != "" {
		x.pol.series.RefusedLate(a.v.reason)
	}
}

// admissionGate is the client's writer while an admission runs: the
// first write, status line or flush waits for the verdict; after an
// admission it passes everything on, after a refusal it sends nothing.
type admissionGate struct {
	a    *pendingAdmission
	w    http.ResponseWriter
	open bool
}

// wait reports whether the verdict let the answer through.
func (g *admissionGate) wait() bool {
	if !g.open {
		<-g.a.done
		g.open = g.a.v == nil
	}
	return g.open
}

func (g *admissionGate) Header() http.Header { return g.w.Header() }

func (g *admissionGate) Write(b []byte) (int, error) {
	if !g.wait() {
		return 0, errAdmissionRefused
	}
	return g.w.Write(b)
}

func (g *admissionGate) WriteHeader(code int) {
	if g.wait() {
		g.w.WriteHeader(code)
	}
}

// FlushError is what http.ResponseController's Flush calls.
func (g *admissionGate) FlushError() error {
	if !g.wait() {
		return errAdmissionRefused
	}
	return http.NewResponseController(g.w).Flush()
}

// Flush is http.Flusher's.
func (g *admissionGate) Flush() { _ = g.FlushError() }

// SetWriteDeadline sends nothing, so it need not wait.
func (g *admissionGate) SetWriteDeadline(t time.Time) error {
	return http.NewResponseController(g.w).SetWriteDeadline(t)
}

// Unwrap lets http.ResponseController reach the writer's read deadline.
func (g *admissionGate) Unwrap() http.ResponseWriter { return g.w }

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
