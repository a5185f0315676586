package bench

import (
	"testing"

	"github.com/tidwall/gjson"
)

// TestFallbackScenarioBodies checks that only the fallback row asks for the
// route whose first upstream fails; the baseline rows ask for the healthy
// one, or the scenario would compare the fallback with itself.
func TestFallbackScenarioBodies(t *testing.T) {
	gw := &subject{name: subjectGateway, gateway: true}
	st := &stack{subjects: map[string]*subject{
		subjectDirect:  {name: subjectDirect},
		subjectGateway: gw,
	}}
	s := &suite{cfg: Config{Scenarios: []string{"fallback"}, Tokens: 4, KeyRate: 10}, st: st}
	scs := s.scenarios()
	if len(scs) != 1 || scs[0].name != "fallback" {
		t.Fatalf("scenarios = %+v, want only fallback", scs)
	}
	want := map[string]string{
		subjectDirect:      roleFast.model(),
		subjectGateway:     roleFast.model(),
		"gateway fallback": roleFallback.model(),
	}
	sc := scs[0]
	if len(sc.entries) != len(want) {
		t.Fatalf("%d rows, want %d", len(sc.entries), len(want))
	}
	for _, e := range sc.entries {
		bodies := sc.bodiesFor(e)
		if len(bodies) != 1 {
			t.Fatalf("%s: %d bodies, want 1", e.label, len(bodies))
		}
		if got := gjson.GetBytes(bodies[0], "model").String(); got != want[e.label] {
			t.Errorf("%s asks for model %q, want %q", e.label, got, want[e.label])
		}
	}
}
