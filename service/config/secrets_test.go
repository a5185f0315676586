package config

import (
	"strings"
	"testing"
)

// TestSecretsAreTrimmed: keys from secret files end in a newline more often
// than not; the loader trims client, upstream and admin keys, and a key that
// is only whitespace is an empty one.
func TestSecretsAreTrimmed(t *testing.T) {
	const (
		clientKey = "client-key-0123456789"
		adminKey  = "admin-key-0123456789"
	)
	withKeys := minimal + "client_keys: [\"${CLIENT_KEY}\"]\nadmin: {key: \"${ADMIN_KEY}\"}\n"
	good := map[string]string{"RELAY_KEY": "sk-relay", "CLIENT_KEY": clientKey, "ADMIN_KEY": adminKey}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for kk, vv := range good {
			m[kk] = vv
		}
		m[k] = v
		return m
	}
	tests := []struct {
		name    string
		doc     string
		env     map[string]string
		wantErr []string // empty: the config loads
		// what the loaded config must hold
		client, upstream, admin, disabled string
	}{
		{name: "trailing newlines", doc: withKeys,
			env:    map[string]string{"RELAY_KEY": "sk-relay\n", "CLIENT_KEY": clientKey + "\n", "ADMIN_KEY": adminKey + "\r\n"},
			client: clientKey, upstream: "sk-relay", admin: adminKey},
		{name: "surrounding spaces and tabs", doc: withKeys,
			env:    map[string]string{"RELAY_KEY": " \tsk-relay ", "CLIENT_KEY": "  " + clientKey + "\t", "ADMIN_KEY": "\n" + adminKey + " "},
			client: clientKey, upstream: "sk-relay", admin: adminKey},
		{name: "inner spaces are kept", doc: withKeys, env: with("RELAY_KEY", "sk relay\n"),
			client: clientKey, upstream: "sk relay", admin: adminKey},
		{name: "literal keys are trimmed too", doc: strings.Replace(minimal, "${RELAY_KEY}", `" sk-literal\n"`, 1) + "client_keys: [\" " + clientKey + " \"]\n",
			client: clientKey, upstream: "sk-literal"},
		{name: "blank upstream key variable disables the upstream as an unset one does", doc: withKeys, env: with("RELAY_KEY", "\n"),
			client: clientKey, upstream: "", admin: adminKey, disabled: "RELAY_KEY is not set"},
		{name: "blank literal upstream key means no key, as an empty one does", doc: strings.Replace(minimal, "${RELAY_KEY}", `" "`, 1),
			upstream: ""},
		{name: "blank client key variable fails as an unset one does", doc: withKeys, env: with("CLIENT_KEY", " \n"),
			wantErr: []string{"client_keys[0]", "CLIENT_KEY is not set"}},
		{name: "blank literal client key fails as an empty one does", doc: minimal + "client_keys: [\" \\n\"]\n",
			wantErr: []string{"client_keys[0]", "is empty"}},
		{name: "blank admin key variable fails as an unset one does", doc: withKeys, env: with("ADMIN_KEY", "\r\n"),
			wantErr: []string{"admin.key", "ADMIN_KEY is not set"}},
		{name: "the length rule counts the trimmed key", doc: withKeys, env: with("CLIENT_KEY", "fifteen-chars-x\n"),
			wantErr: []string{"client_keys[0]", "is 15 characters"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.doc), env(tt.env))
			if len(tt.wantErr) > 0 {
				errorSays(t, err, tt.wantErr...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.client != "" && (len(cfg.ClientKeys) != 1 || cfg.ClientKeys[0] != tt.client) {
				t.Errorf("client_keys = %q, want [%q]", cfg.ClientKeys, tt.client)
			}
			u := cfg.Upstreams[0]
			if u.APIKey != tt.upstream {
				t.Errorf("api_key = %q, want %q", u.APIKey, tt.upstream)
			}
			if cfg.Admin.Key != tt.admin {
				t.Errorf("admin.key = %q, want %q", cfg.Admin.Key, tt.admin)
			}
			if tt.disabled == "" && u.Disabled != "" {
				t.Errorf("upstream disabled: %q", u.Disabled)
			}
			if tt.disabled != "" && (!strings.Contains(u.Disabled, tt.disabled) || len(cfg.Warnings) != 1) {
				t.Errorf("disabled = %q warnings = %q, want disabled for %q", u.Disabled, cfg.Warnings, tt.disabled)
			}
		})
	}
}
