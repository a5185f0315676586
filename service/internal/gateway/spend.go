package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/budget"
)

// spendScope is one key's or team's line of GET /admin/spend.
type spendScope struct {
	Scope string `json:"scope"` // key or team
	Name  string `json:"name"`
	Team  string `json:"team,omitempty"` // a key's team
	// Period is day or month; PeriodID the one reported (2026-12-03,
	// 2026-12), from Start to Reset (its end), in UTC.
	Period   string    `json:"period"`
	PeriodID string    `json:"period_id"`
	Start    time.Time `json:"start"`
	Reset    time.Time `json:"reset"`
	SpendUSD float64   `json:"spend_usd"`
	// BudgetUSD and RemainingUSD are absent without a budget for the period.
	BudgetUSD    *float64 `json:"budget_usd,omitempty"`
	RemainingUSD *float64 `json:"remaining_usd,omitempty"`
	// Tracked is false for a key whose spend is not kept in Redis: neither
	// it nor its team has limits or a budget.
	Tracked bool `json:"tracked"`
}

// serveSpend answers GET /admin/spend?team=&key=&period=: the spend in
// Redis of every named key and team (or the one asked for) in a period.
// period is day or month (the current one), a day (2026-12-03) or a
// month (2026-12); absent, each scope's budget period, else the month.
func (s *Server) serveSpend(w http.ResponseWriter, r *http.Request) {
	st := s.state.Load()
	if !st.adminAuthorized(r) {
		writeError(w, &apiError{Status: http.StatusUnauthorized, Type: typeInvalidRequest, Code: "invalid_api_key",
			Message: "/admin/spend needs the admin key: send it as 'Authorization: Bearer ADMIN_KEY'."})
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		writeError(w, &apiError{Status: http.StatusMethodNotAllowed, Type: typeInvalidRequest, Code: "method_not_allowed",
			Message: "Method " + r.Method + " is not allowed here; use GET."})
		return
	}
	if s.budgets == nil {
		writeError(w, &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Code: "spend_not_kept",
			Message: "Spend is kept in Redis: set cache.redis_url and give keys or teams limits or budgets."})
		return
	}
	q := r.URL.Query()
	now := s.budgets.Now()
	period, at, err := parsePeriod(q.Get("period"), now)
	if err != nil {
		writeError(w, errBadRequest("invalid_period", err.Error()))
		return
	}
	cfg := st.cfg
	teamQ, keyQ := q.Get("team"), q.Get("key")
	if teamQ != "" && cfg.Team(teamQ) == nil {
		writeError(w, &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Code: "unknown_team",
			Message: fmt.Sprintf("No team %q in the config.", truncate(teamQ, 64))})
		return
	}
	var lines []spendScope
	add := func(scope, name, team string, sub *budget.Subject, b *config.Budget, tracked bool) error {
		p := period
		if p == "" {
			p = config.PeriodMonth
			if b != nil {
				p = b.Period
			}
		}
		start, end := budget.Bounds(p, at)
		l := spendScope{Scope: scope, Name: name, Team: team, Period: p, PeriodID: budget.PeriodID(p, at)[1:],
			Start: start, Reset: end, Tracked: tracked}
		if tracked {
			v, err := s.budgets.SpendAt(r.Context(), sub, scope, p, at)
			if err != nil {
				return err
			}
			l.SpendUSD = budget.USD(v)
			if b != nil && b.Period == p {
				bu, left := b.USD, budget.USD(budget.ToMicros(b.USD)-v)
				l.BudgetUSD, l.RemainingUSD = &bu, &left
			}
		}
		lines = append(lines, l)
		return nil
	}
	found := keyQ == ""
	for i := range cfg.Keys {
		k := &cfg.Keys[i]
		if (keyQ != "" && k.Name != keyQ) || (teamQ != "" && k.Team != teamQ) {
			continue
		}
		found = true
		sub := subjectOf(cfg, k.Team, k.Name)
		if err := add("key", k.Name, k.Team, sub, k.Budget, cfg.Limited(k)); err != nil {
			s.spendUnavailable(w, err)
			return
		}
	}
	if !found {
		writeError(w, &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Code: "unknown_key",
			Message: fmt.Sprintf("No key %q in the config (of team %q).", truncate(keyQ, 64), truncate(teamQ, 64))})
		return
	}
	for i := range cfg.Teams {
		t := &cfg.Teams[i]
		if (teamQ != "" && t.Name != teamQ) || (keyQ != "" && teamQ == "") {
			continue
		}
		tracked := false
		for j := range cfg.Keys {
			tracked = tracked || (cfg.Keys[j].Team == t.Name && cfg.Limited(&cfg.Keys[j]))
		}
		if err := add("team", t.Name, "", subjectOf(cfg, t.Name, ""), t.Budget, tracked); err != nil {
			s.spendUnavailable(w, err)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(struct {
		At     time.Time    `json:"at"`
		Scopes []spendScope `json:"scopes"`
	}{at.UTC(), lines})
}

func (s *Server) spendUnavailable(w http.ResponseWriter, err error) {
	s.log.Warn("/admin/spend: Redis unreachable", "error", err.Error())
	w.Header().Set("Retry-After", "1")
	writeError(w, &apiError{Status: http.StatusServiceUnavailable, Type: typeServer, Code: "spend_unavailable",
		Message: "Spend cannot be read now: Redis is unreachable."})
}

// subjectOf is the Redis subject of a key (or, with key empty, a team):
// only its names matter to read spend.
func subjectOf(cfg *config.Config, team, key string) *budget.Subject {
	sub := &budget.Subject{Key: budget.Scope{Name: key}}
	if team != "" {
		sub.Team = &budget.Scope{Name: team}
	}
	return sub
}

// parsePeriod reads /admin/spend's period: "", day, month (the current
// ones), 2026-12-03 or 2026-12. It returns the period kind ("" for each
// scope's own) and a time inside it.
func parsePeriod(v string, now time.Time) (string, time.Time, error) {
	switch v {
	case "", config.PeriodDay, config.PeriodMonth:
		return v, now, nil
	}
	if t, err := time.Parse("2006-01-02", v); err == nil {
		return config.PeriodDay, t, nil
	}
	if t, err := time.Parse("2006-01", v); err == nil {
		return config.PeriodMonth, t, nil
	}
	return "", time.Time{}, fmt.Errorf("period %q: use day, month, a day (2026-12-03) or a month (2026-12), in UTC", truncate(v, 32))
}
