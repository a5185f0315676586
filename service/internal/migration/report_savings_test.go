package migration

import (
	"math"
	"testing"

	"github.com/relaygate/relaygate/service/config"
)

// TestSplitSavings: what the report says each model saved, from the
// counters of a window and the config's prices. One million prompt and one
// million completion tokens went upstream; the reference charges $3 + $6.
func TestSplitSavings(t *testing.T) {
	cfg := &config.Config{Models: []config.Model{
		{Name: "m", ReferencePrice: &config.Price{InputPerMTok: 3, OutputPerMTok: 6}},
		{Name: "no-ref"},
	}}
	cases := []struct {
		name  string
		model string
		// counters: cost, savings (never below zero per answer) and the
		// cache's savings, when the gateway exports that counter.
		cost, saved, cache float64
		cacheKnown         bool
		// want: routing, cache and total savings.
		routing, cacheSaved, total float64
	}{
		{name: "cheaper route and cache hits", model: "m", cost: 3, saved: 6 + 2, cache: 2, cacheKnown: true,
			routing: 6, cacheSaved: 2, total: 8},
		// Half the tokens went through a route at $12 + $24 (each of
		// those answers cost $9 more than the reference, which the savings
		// counter leaves out), half through one at $1 + $2 ($3 saved).
		{name: "a route dearer than the reference", model: "m", cost: 18 + 1.5, saved: 3 + 1, cache: 1, cacheKnown: true,
			routing: 9 - 19.5, cacheSaved: 1, total: 9 - 19.5 + 1},
		{name: "a gateway without the cache counter", model: "m", cost: 3, saved: 6 + 2,
			routing: 6, cacheSaved: 2, total: 8},
		{name: "no reference price", model: "no-ref", cost: 3, saved: 2, cache: 2, cacheKnown: true,
			routing: 0, cacheSaved: 2, total: 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := ModelReport{Name: tc.model, PromptTokens: 1e6, CompletionTokens: 1e6,
				CostUSD: Figure(tc.cost), SavingsUSD: Figure(tc.saved)}
			m.splitSavings(cfg, tc.cache, tc.cacheKnown)
			m.finish(0)
			for _, f := range []struct {
				what      string
				got, want float64
			}{
				{"routing savings", float64(m.RoutingSavingsUSD), tc.routing},
				{"cache savings", float64(m.CacheSavingsUSD), tc.cacheSaved},
				{"savings", float64(m.SavingsUSD), tc.total},
				{"reference cost", float64(m.ReferenceUSD), tc.cost + tc.total},
			} {
				if math.Abs(f.got-f.want) > 1e-9 {
					t.Errorf("%s = %v, want %v", f.what, f.got, f.want)
				}
			}
		})
	}
}
