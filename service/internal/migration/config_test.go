package migration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadConfigNamedKeys: a named key's secret (keys[].key) need not be
// set either, nor two of them be told apart by the placeholder.
func TestLoadConfigNamedKeys(t *testing.T) {
	const doc = `
client_keys: ["${CLIENT_KEY}"]
keys:
  - {name: a, key: "${A_KEY}"}
  - {name: b, key: ["${B_KEY}"]}
upstreams:
  - {name: relay, base_url: "http://127.0.0.1:1/v1", api_key: "${RELAY_KEY}"}
models:
  - {name: m, route: [relay]}
`
	cfg, err := parseConfig([]byte(doc), func(k string) (string, bool) { return map[string]string{"RELAY_KEY": "rk"}[k], k == "RELAY_KEY" })
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Keys) != 2 {
		t.Fatalf("keys %+v", cfg.Keys)
	}
}

func TestLoadConfigClientKeys(t *testing.T) {
	const doc = `
client_keys: ["${CLIENT_KEY}", "${SHARED_KEY}"]
upstreams:
  - {name: relay, base_url: "http://127.0.0.1:1/v1", api_key: "${RELAY_KEY}"}
  - {name: shared, base_url: "http://127.0.0.1:2/v1", api_key: "${SHARED_KEY}"}
models:
  - {name: m, route: [relay, shared]}
`
	tests := []struct {
		name         string
		env          map[string]string
		wantErr      string
		relayKey     string
		relayEnabled bool
	}{
		{
			name:     "client keys need not be set",
			env:      map[string]string{"RELAY_KEY": "rk", "SHARED_KEY": "shared-key-0123456789"},
			relayKey: "rk", relayEnabled: true,
		},
		{
			// SHARED_KEY also feeds an upstream's api_key: the placeholder
			// must never stand in for it, so the upstream is disabled.
			name:    "a variable shared with an upstream key is not replaced",
			env:     map[string]string{"RELAY_KEY": "rk", "CLIENT_KEY": "client-key-0123456789"},
			wantErr: "client_keys[1]: environment variable SHARED_KEY is not set",
		},
		{
			name: "unset upstream keys still disable the upstream",
			env:  map[string]string{"SHARED_KEY": "shared-key-0123456789"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseConfig([]byte(doc), func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if wantErr(t, err, tt.wantErr) {
				return
			}
			relay, _ := cfg.Upstream("relay")
			if relay.APIKey != tt.relayKey || (relay.Disabled == "") != tt.relayEnabled {
				t.Errorf("relay key %q disabled %q", relay.APIKey, relay.Disabled)
			}
			shared, _ := cfg.Upstream("shared")
			if strings.HasPrefix(shared.APIKey, unusedClientKey) {
				t.Error("the client-key placeholder reached an upstream")
			}
		})
	}
}

func TestLoadConfigFile(t *testing.T) {
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "config:") {
		t.Errorf("missing file: %v", err)
	}
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte("upstreams: [{name: u, base_url: nope}]\nmodels: [{name: m, route: [u]}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), "base_url") || !strings.Contains(err.Error(), path) {
		t.Errorf("bad file: %v", err)
	}
	// The shipped configs load with no client key set.
	for name, env := range map[string]map[string]string{
		"gateway.yaml":     {"HOLYSHEEP_API_KEY": "hk"},
		"compare-sim.yaml": {"RELAY_SIM_URL": "http://127.0.0.1:9101/v1", "OFFICIAL_SIM_URL": "http://127.0.0.1:9102/v1"},
	} {
		data, err := os.ReadFile(filepath.Join("..", "..", "..", "config", name))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := parseConfig(data, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if m := cfg.Models[0]; len(m.Route) < 2 || m.ReferencePrice == nil {
			t.Errorf("%s: model %s has no second upstream to compare or no reference price", name, m.Name)
		}
	}
}
