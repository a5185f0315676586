package migration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
		sharedDown   bool
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
			name:       "a variable shared with an upstream key is not replaced",
			env:        map[string]string{"RELAY_KEY": "rk", "CLIENT_KEY": "client-key-0123456789"},
			wantErr:    "client_keys[1]: environment variable SHARED_KEY is not set",
			sharedDown: true,
		},
		{
			name:       "unset upstream keys still disable the upstream",
			env:        map[string]string{"SHARED_KEY": "shared-key-0123456789"},
			relayKey:   "",
			sharedDown: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseConfig([]byte(doc), func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			relay, _ := cfg.Upstream("relay")
			if relay.APIKey != tt.relayKey || (relay.Disabled == "") != tt.relayEnabled {
				t.Errorf("relay key %q disabled %q", relay.APIKey, relay.Disabled)
			}
			shared, _ := cfg.Upstream("shared")
			if shared.APIKey == unusedClientKey {
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
	// The shipped configs load without the gateway's client key set.
	for _, name := range []string{"gateway.yaml", "compare-sim.yaml"} {
		if _, err := LoadConfig(filepath.Join("..", "..", "..", "config", name)); err != nil &&
			!strings.Contains(err.Error(), "base_url") { // compare-sim.yaml's URLs come from variables
			t.Errorf("%s: %v", name, err)
		}
	}
}
