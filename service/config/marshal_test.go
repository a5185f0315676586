package config

import (
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// TestDurationMarshal: a duration is written in its largest whole unit,
// and reads back as the same value.
func TestDurationMarshal(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Hour:               "1h",
		90 * time.Minute:        "90m",
		180 * time.Second:       "3m",
		45 * time.Second:        "45s",
		1500 * time.Millisecond: "1500ms",
		200 * time.Millisecond:  "200ms",
		1500 * time.Microsecond: "1.5ms",
	} {
		b, err := yaml.Marshal(Duration(d))
		if err != nil {
			t.Fatal(err)
		}
		if got := string(b); got != want+"\n" {
			t.Errorf("Duration(%s) marshals to %q, want %q", d, got, want)
		}
		var back Duration
		if err := yaml.Unmarshal(b, &back); err != nil || back.D() != d {
			t.Errorf("Duration(%s) = %q does not read back (%v, %v)", d, b, back, err)
		}
	}
}

// TestMarshalReadsBack: a Config written by yaml.Marshal loads with Parse
// as the same routes, prices and settings, and leaves defaulted keys out.
func TestMarshalReadsBack(t *testing.T) {
	in := Config{
		Listen:     ":8000",
		ClientKeys: []string{"${GATEWAY_API_KEY}"},
		Upstreams: []Upstream{
			{Name: "relay", BaseURL: "https://relay.example/v1", APIKey: "${RELAY_KEY}", Timeout: Duration(3 * time.Minute)},
			{Name: "openai", BaseURL: "https://api.openai.com/v1", APIKey: "${OPENAI_API_KEY}"},
			{Name: "gpu-a", BaseURL: "http://10.0.0.5:8000/v1", Health: &HealthCheck{Path: "/health", Interval: Duration(10 * time.Second)}},
			{Name: "gpu-b", BaseURL: "http://10.0.0.6:8000/v1"},
		},
		Models: []Model{{
			Name: "gpt-4.1",
			Route: []RouteEntry{{Upstream: "relay"}, {Upstream: "openai", Model: "gpt-4.1-2025-04-14", Price: &Price{InputPerMTok: 2, OutputPerMTok: 8}},
				{Pool: []string{"gpu-a", "gpu-b"}, Balance: BalanceWeighted, Weights: map[string]int{"gpu-a": 2}}},
			Price: Price{InputPerMTok: 1.5, OutputPerMTok: 6},
		}},
		Retry: Retry{Attempts: 4, BackoffMin: Duration(250 * time.Millisecond)},
	}
	b, err := yaml.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b, env(map[string]string{"GATEWAY_API_KEY": "gw-key-0123456789abcdef", "RELAY_KEY": "rk", "OPENAI_API_KEY": "ok"}))
	if err != nil {
		t.Fatalf("Parse refuses what Marshal wrote: %v\n%s", err, b)
	}
	if got.Upstreams[0].Timeout != in.Upstreams[0].Timeout || got.Upstreams[0].APIKey != "rk" {
		t.Errorf("upstream relay = %+v", got.Upstreams[0].Name)
	}
	if r := got.Models[0].Route; len(r) != 3 || r[0].Upstream != "relay" || r[1].Model != "gpt-4.1-2025-04-14" || r[1].Price.OutputPerMTok != 8 ||
		!slices.Equal(r[2].Pool, []string{"gpu-a", "gpu-b"}) || r[2].Balance != BalanceWeighted || r[2].Weights["gpu-a"] != 2 {
		t.Errorf("route = %+v", r)
	}
	if u, _ := got.Upstream("gpu-a"); u.Health == nil || u.Health.Path != "/health" || u.Health.Interval.D() != 10*time.Second {
		t.Errorf("gpu-a health = %+v", u.Health)
	}
	if got.Retry.Attempts != 4 || got.Retry.BackoffMin != in.Retry.BackoffMin {
		t.Errorf("retry = %+v", got.Retry)
	}
	for _, absent := range []string{"max_body_bytes", "circuit_breaker", "cors", "apis", "disabled", "warnings"} {
		if strings.Contains(string(b), absent) {
			t.Errorf("Marshal wrote the unset key %s:\n%s", absent, b)
		}
	}
}
