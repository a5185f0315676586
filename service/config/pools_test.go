package config

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

const poolDoc = `
upstreams:
  - {name: relay, base_url: "https://relay.example/v1"}
  - name: gpu-a
    base_url: http://10.0.1.10:8000/v1
    health: {path: /health, interval: 5s}
    hourly_cost_usd: 1.2
    tokens_per_hour: 2000000
  - {name: gpu-b, base_url: "http://10.0.1.11:8000/v1", health: {}}
  - {name: gpu-c, base_url: "http://10.0.1.12:8000/v1"}
models:
  - name: llama
    route:
      - relay
      - {pool: [gpu-a, gpu-b], model: meta-llama/Llama-3.1-8B-Instruct}
      - {pool: [gpu-c], balance: weighted, weights: {gpu-c: 3}}
    price: {input_per_mtok: 0.2, output_per_mtok: 0.6}
`

// TestPoolEntries: a pool entry loads with its members, balance (least_busy
// by default) and weights; health probes get their defaults; a self-hosted
// upstream prices its tokens from its hourly cost.
func TestPoolEntries(t *testing.T) {
	cfg, err := Parse([]byte(poolDoc), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Models[0].Route
	if len(r) != 3 || r[0].Upstream != "relay" || len(r[0].Pool) != 0 {
		t.Fatalf("route = %+v", r)
	}
	if got := strings.Join(r[1].Upstreams(), ","); got != "gpu-a,gpu-b" || r[1].Balance != BalanceLeastBusy || r[1].Upstream != "" ||
		r[1].Model != "meta-llama/Llama-3.1-8B-Instruct" {
		t.Errorf("pool entry = %+v, want gpu-a,gpu-b least_busy with the model renamed", r[1])
	}
	if r[2].Balance != BalanceWeighted || r[2].Weights["gpu-c"] != 3 {
		t.Errorf("weighted pool = %+v", r[2])
	}
	if got := strings.Join(r[0].Upstreams(), ","); got != "relay" {
		t.Errorf("single entry's upstreams = %s", got)
	}

	a, _ := cfg.Upstream("gpu-a")
	if h := a.Health; h == nil || h.Path != "/health" || h.Interval.D() != 5*time.Second || h.Timeout.D() != 2*time.Second ||
		h.HealthyThreshold != 1 || h.UnhealthyThreshold != 1 || h.SendKey {
		t.Errorf("gpu-a health = %+v", a.Health)
	}
	b, _ := cfg.Upstream("gpu-b")
	if h := b.Health; h == nil || h.Path != DefaultHealthPath || h.Interval.D() != DefaultHealthInterval {
		t.Errorf("gpu-b health (all defaults) = %+v", b.Health)
	}
	if c, _ := cfg.Upstream("gpu-c"); c.Health != nil {
		t.Errorf("gpu-c has no health: but got %+v", c.Health)
	}

	// 1.2 $/h over 2M tokens an hour: 0.6 $ per million tokens, any kind.
	m := &cfg.Models[0]
	p := cfg.PriceAt(m, r[1], "gpu-a")
	if math.Abs(p.InputPerMTok-0.6) > 1e-9 || math.Abs(p.OutputPerMTok-0.6) > 1e-9 || math.Abs(p.CacheRead()-0.6) > 1e-9 {
		t.Errorf("gpu-a price = %+v, want 0.6 $/MTok from its hourly cost", p)
	}
	if p := cfg.PriceAt(m, r[1], "gpu-b"); p != m.Price {
		t.Errorf("gpu-b (no hourly cost) price = %+v, want the model's", p)
	}
	own := Price{InputPerMTok: 9, OutputPerMTok: 9}
	if p := cfg.PriceAt(m, RouteEntry{Pool: []string{"gpu-a"}, Price: &own}, "gpu-a"); p != own {
		t.Errorf("an entry's own price = %+v, want it over the hourly cost", p)
	}
}

// TestBrokenPools: each mistake in a pool or a health probe fails with its
// line and key.
func TestBrokenPools(t *testing.T) {
	base := `
upstreams:
  - {name: a, base_url: "http://10.0.0.1:8000/v1"}
  - {name: b, base_url: "http://10.0.0.2:8000/v1"}
models:
  - name: m
    route:
      - ROUTE
`
	route := func(entry string) string { return strings.Replace(base, "ROUTE", entry, 1) }
	upstreamB := func(extra string) string {
		return strings.Replace(route("{pool: [a, b]}"), `base_url: "http://10.0.0.2:8000/v1"}`, `base_url: "http://10.0.0.2:8000/v1", `+extra+`}`, 1)
	}
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"pool member unknown", route("{pool: [a, c]}"), []string{"line 8: models[0].route[0].pool[1]", `upstream "c" is not defined`}},
		{"empty pool", route("{pool: []}"), []string{"line 8: models[0].route[0].pool", "is empty"}},
		{"pool inside pool", route("{pool: [a, {pool: [b]}]}"), []string{"line 8: models[0].route[0].pool[1]", "cannot hold another pool"}},
		{"pool and upstream", route("{upstream: a, pool: [b]}"), []string{"models[0].route[0].upstream", "either one upstream or a pool"}},
		{"member twice", route("{pool: [a, a]}"), []string{"models[0].route[0].pool[1]", "appears twice"}},
		{"member also in the route", strings.Replace(route("{pool: [a, b]}"), "      - {pool", "      - a\n      - {pool", 1),
			[]string{"line 9: models[0].route[1].pool[0]", `"a" appears twice`}},
		{"unknown balance", route("{pool: [a, b], balance: random}"), []string{"line 8: models[0].route[0].balance", `"random"`, "least_busy"}},
		{"weights without weighted", route("{pool: [a, b], weights: {a: 2}}"), []string{"models[0].route[0].weights", "balance: weighted"}},
		{"weight of a stranger", route("{pool: [a, b], balance: weighted, weights: {c: 2}}"), []string{"models[0].route[0].weights.c", "not a member"}},
		{"zero weight", route("{pool: [a, b], balance: weighted, weights: {a: 0}}"), []string{"models[0].route[0].weights.a", "at least 1"}},
		{"pool not a list", route("{pool: a}"), []string{"line 8", "pool"}},
		{"unknown pool key", route("{pool: [a, b], balanse: weighted}"), []string{"line 8", `unknown key "balanse"`}},
		{"bad interval", upstreamB("health: {interval: 10ms}"), []string{"line 4: upstreams[1].health.interval", "shorter than 100ms"}},
		{"interval without unit", upstreamB("health: {interval: 10}"), []string{"line 4", "not a duration"}},
		{"timeout over interval", upstreamB("health: {interval: 1s, timeout: 2s}"), []string{"upstreams[1].health.timeout", "longer than interval"}},
		{"relative health path", upstreamB("health: {path: health}"), []string{"upstreams[1].health.path", "must start with '/'"}},
		{"zero threshold", upstreamB("health: {unhealthy_threshold: -1}"), []string{"upstreams[1].health.unhealthy_threshold", "between 1 and 10"}},
		{"send_key without a key", upstreamB("health: {send_key: true}"), []string{"upstreams[1].health.send_key", "no api_key"}},
		{"unknown health key", upstreamB("health: {intervall: 5s}"), []string{"line 4", `unknown key "intervall"`}},
		{"hourly cost without tokens", upstreamB("hourly_cost_usd: 1.5"), []string{"upstreams[1].tokens_per_hour", "is needed with hourly_cost_usd"}},
		{"tokens without hourly cost", upstreamB("tokens_per_hour: 1000"), []string{"upstreams[1].hourly_cost_usd", "is needed"}},
		{"negative hourly cost", upstreamB("hourly_cost_usd: -1, tokens_per_hour: 1000"), []string{"upstreams[1].hourly_cost_usd", "negative"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc), env(nil))
			errorSays(t, err, tt.want...)
		})
	}
}

// TestUnsetBaseURLDisablesTheUpstream: a model server whose address comes
// from an unset variable (a stack without GPU hosts) is off with a
// warning, not a broken config; its pool is skipped.
func TestUnsetBaseURLDisablesTheUpstream(t *testing.T) {
	doc := `
upstreams:
  - {name: relay, base_url: "https://relay.example/v1"}
  - {name: gpu-a, base_url: "${GPU_A_URL}", health: {}}
  - {name: gpu-b, base_url: "http://${GPU_B_HOST}:8000/v1"}
models:
  - name: m
    route: [relay, {pool: [gpu-a, gpu-b]}]
`
	cfg, err := Parse([]byte(doc), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gpu-a", "gpu-b"} {
		u, _ := cfg.Upstream(name)
		if !strings.Contains(u.Disabled, "base_url: environment variable") {
			t.Errorf("%s: Disabled = %q, want the unset base_url named", name, u.Disabled)
		}
	}
	if len(cfg.Warnings) != 2 {
		t.Errorf("warnings %v, want one per disabled upstream", cfg.Warnings)
	}
	cfg, err = Parse([]byte(doc), env(map[string]string{"GPU_A_URL": "http://10.0.1.10:8000/v1", "GPU_B_HOST": "10.0.1.11"}))
	if err != nil {
		t.Fatal(err)
	}
	if u, _ := cfg.Upstream("gpu-b"); u.Disabled != "" || u.BaseURL != "http://10.0.1.11:8000/v1" {
		t.Errorf("gpu-b with its variable set: %+v", u)
	}
}

// TestShippedSelfHostedTier: config/gateway.yaml routes deepseek-v3.2
// relay, official, then the GPU hosts' pool, whose members probe vLLM's
// /health and price from their hourly cost; without the hosts' addresses
// they are off, with them on.
func TestShippedSelfHostedTier(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	data, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "config", "gateway.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"GATEWAY_API_KEY": "gw-key-0123456789abcdef", "HOLYSHEEP_API_KEY": "k", "DEEPSEEK_API_KEY": "k"}
	cfg, err := Parse(data, env(vars))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gpu-a", "gpu-b", "gpu-c"} {
		if u, _ := cfg.Upstream(name); u == nil || u.Disabled == "" {
			t.Errorf("%s is in service without its address", name)
		}
	}
	vars["GPU_HOST_A_URL"], vars["GPU_HOST_B_URL"], vars["GPU_HOST_C_URL"] = "http://10.0.1.10:8000/v1", "http://10.0.1.11:8000/v1", "http://10.0.1.12:8000/v1"
	if cfg, err = Parse(data, env(vars)); err != nil {
		t.Fatal(err)
	}
	var m *Model
	for i := range cfg.Models {
		if cfg.Models[i].Name == "deepseek-v3.2" {
			m = &cfg.Models[i]
		}
	}
	if m == nil || len(m.Route) != 3 || m.Route[0].Upstream != "holysheep" || m.Route[1].Upstream != "deepseek" ||
		strings.Join(m.Route[2].Pool, ",") != "gpu-a,gpu-b,gpu-c" {
		t.Fatalf("deepseek-v3.2 route = %+v, want holysheep, deepseek, pool of the GPU hosts", m)
	}
	for _, name := range m.Route[2].Pool {
		u, _ := cfg.Upstream(name)
		if u.Disabled != "" || u.Health == nil || u.Health.Path != "/health" {
			t.Errorf("%s: disabled %q, health %+v", name, u.Disabled, u.Health)
		}
		if p := cfg.PriceAt(m, m.Route[2], name); math.Abs(p.OutputPerMTok-0.55) > 1e-9 {
			t.Errorf("%s prices at %+v, want 0.55 $/MTok (1.10 $/h over 2M tokens)", name, p)
		}
	}
}

// TestPoolEntryRoundTrips: a pool entry written out (the Pulumi program
// renders configs) loads back as the same pool, not as a bare name.
func TestPoolEntryRoundTrips(t *testing.T) {
	cfg, err := Parse([]byte(poolDoc), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(cfg.Models[0].Route)
	if err != nil {
		t.Fatal(err)
	}
	var back []RouteEntry
	if err := yaml.Unmarshal(out, &back); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !reflect.DeepEqual(back, cfg.Models[0].Route) {
		t.Errorf("route written as\n%s\nloads back as %+v, want %+v", out, back, cfg.Models[0].Route)
	}
	if !strings.HasPrefix(string(out), "- relay\n") {
		t.Errorf("a plain entry is no longer a bare name:\n%s", out)
	}
}
