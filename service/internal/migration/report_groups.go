package migration

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/prometheus/common/model"
)

// Groupings of ReportOptions.By: the migration table per team or per
// named key (config keys:), from the gateway's series by team and key.
const (
	ByTeam = "team"
	ByKey  = "key"
)

// GroupReport is what one team's or named key's requests got and cost.
type GroupReport struct {
	// Team is the team; Key the key (empty when grouped by team).
	Team             string `json:"team"`
	Key              string `json:"key,omitempty"`
	Requests         Figure `json:"requests"`
	Refusals         Figure `json:"refusals"`
	PromptTokens     Figure `json:"prompt_tokens"`
	CompletionTokens Figure `json:"completion_tokens"`
	// CostUSD is what its answers cost (its budgets' charge); ReferenceUSD
	// what they would have at their models' reference prices, cache hits
	// included; SavingsUSD the difference.
	CostUSD           Figure `json:"cost_usd"`
	ReferenceUSD      Figure `json:"reference_usd"`
	SavingsUSD        Figure `json:"savings_usd"`
	SavingsShare      Figure `json:"savings_share"`
	CostPerMTok       Figure `json:"cost_per_mtok_usd"`
	MonthlyCostUSD    Figure `json:"monthly_cost_usd"`
	MonthlySavingsUSD Figure `json:"monthly_savings_usd"`
}

// readGroups fills r.Groups by team or by team and key.
func (r *ReportResult) readGroups(ctx context.Context, q *querier, by string, monthly float64) error {
	labels := []string{"team"}
	if by == ByKey {
		labels = append(labels, "key")
	}
	// The first query to fail fails the report; none runs after it.
	var err error
	read := func(metric string, extra ...string) map[string]float64 {
		if err != nil {
			return nil
		}
		var vec model.Vector
		vec, err = q.vector(ctx, q.increase(metric, append(append([]string(nil), labels...), extra...)...))
		return byLabels(vec, append(append([]string(nil), labels...), extra...)...)
	}
	requests := read("relaygate_key_requests_total")
	refusals := read("relaygate_refusals_total")
	tokens := read("relaygate_key_tokens_total", "kind")
	cost := read("relaygate_spend_usd_total")
	ref := read("relaygate_key_reference_cost_usd_total")
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(boolSet(requests, cost))) {
		team, key, _ := strings.Cut(name, "\x00")
		g := GroupReport{Team: team, Key: key,
			Requests: Figure(requests[name]), Refusals: Figure(refusals[name]),
			PromptTokens: Figure(tokens[name+"\x00prompt"]), CompletionTokens: Figure(tokens[name+"\x00completion"]),
			CostUSD: Figure(cost[name]), ReferenceUSD: Figure(ref[name])}
		g.SavingsUSD = g.ReferenceUSD - g.CostUSD
		g.SavingsShare = ratio(float64(g.SavingsUSD), float64(g.ReferenceUSD))
		g.CostPerMTok = ratio(float64(g.CostUSD)*1e6, float64(g.PromptTokens+g.CompletionTokens))
		g.MonthlyCostUSD = g.CostUSD * Figure(monthly)
		g.MonthlySavingsUSD = g.SavingsUSD * Figure(monthly)
		r.Groups = append(r.Groups, g)
	}
	if len(r.Groups) == 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("No requests of named keys (config keys:) in the window: nothing to show by %s.", by))
	}
	return nil
}

func boolSet(ms ...map[string]float64) map[string]bool {
	out := map[string]bool{}
	for _, m := range ms {
		for k := range m {
			out[k] = true
		}
	}
	return out
}

// groupTable is the migration table by team or key.
func (r *ReportResult) groupTable() *Table {
	first := "TEAM"
	if r.By == ByKey {
		first = "TEAM / KEY"
	}
	t := &Table{
		Title: "Requests, cost and savings by " + r.By,
		Columns: []string{first, "REQUESTS", "REFUSED", "TOKENS IN/OUT", "$/MTOK", "COST", "REFERENCE", "SAVINGS",
			"MONTHLY COST", "MONTHLY SAVINGS"},
	}
	for _, g := range r.Groups {
		name := orDash(g.Team)
		if r.By == ByKey {
			name += " / " + g.Key
		}
		t.Rows = append(t.Rows, []string{name, fmtCount(g.Requests), fmtCount(g.Refusals),
			fmtTokens(float64(g.PromptTokens)) + " / " + fmtTokens(float64(g.CompletionTokens)),
			fmtUSD(g.CostPerMTok), fmtUSD(g.CostUSD), fmtUSD(g.ReferenceUSD), fmtSavings(g.SavingsUSD, g.SavingsShare),
			fmtUSD(g.MonthlyCostUSD), fmtUSD(g.MonthlySavingsUSD)})
	}
	t.Notes = []string{
		"Named keys (config keys:) only: keys of the plain client_keys list have no name or team.",
		"REFUSED counts requests the gateway refused for the key's allow-list, limits, budget or an unreachable Redis.",
		"REFERENCE is the same answers at their models' reference prices (cache hits included, at no cost); a model without one counts at its cost.",
	}
	return t
}
