package config

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

// Seeds live in testdata/fuzz/<FuzzName>/ (the project's own config files
// among them); scripts/fuzz.sh runs each target for a while.

// namesLineOrKey matches one line of a Parse error that says where the
// problem is: "line N: …" or a key path such as "upstreams[0].base_url: …".
var namesLineOrKey = regexp.MustCompile(`^(line \d+: |[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*: )`)

// FuzzParse: Parse never panics, whatever the file and the environment;
// every error line names a line or a key (or is YAML's own syntax error,
// or says the file is empty); and a config it accepts holds together.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal), "sk-relay-key")
	f.Fuzz(func(t *testing.T, data []byte, envValue string) {
		lookup := func(string) (string, bool) { return envValue, envValue != "" }
		cfg, err := Parse(data, lookup)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				line = strings.TrimSpace(line)
				switch {
				case line == "file is empty", strings.HasPrefix(line, "not valid YAML: "):
				case !namesLineOrKey.MatchString(line):
					t.Fatalf("error line names no line or key: %q\nin: %v", line, err)
				}
			}
			return
		}
		if len(cfg.Upstreams) == 0 || len(cfg.Models) == 0 {
			t.Fatalf("accepted with %d upstreams and %d models", len(cfg.Upstreams), len(cfg.Models))
		}
		for _, m := range cfg.Models {
			if len(m.Route) == 0 {
				t.Fatalf("model %q accepted with an empty route", m.Name)
			}
			for _, e := range m.Route {
				if _, ok := cfg.Upstream(e.Upstream); !ok {
					t.Fatalf("model %q routes to undefined upstream %q", m.Name, e.Upstream)
				}
			}
		}
		for _, u := range cfg.Upstreams {
			if u.Timeout <= 0 || u.ConnectTimeout <= 0 || u.ConnectTimeout > u.Timeout {
				t.Fatalf("upstream %q accepted with timeout %s, connect_timeout %s", u.Name, u.Timeout, u.ConnectTimeout)
			}
		}
		for _, k := range cfg.ClientKeys {
			if len(k) < 16 {
				t.Fatalf("client key of %d characters accepted", len(k))
			}
		}
		if cfg.Retry.Attempts < 1 || cfg.Retry.BackoffMax < cfg.Retry.BackoffMin || cfg.MaxBodyBytes < 1024 {
			t.Fatalf("accepted retry %+v, max_body_bytes %d", cfg.Retry, cfg.MaxBodyBytes)
		}
		_ = cfg.Redacted()
	})
}

// secretsDoc puts the ${SECRET} variable wherever a secret goes in a real
// config: a client key, an upstream key, the Redis URL's password.
const secretsDoc = `
client_keys: ["${SECRET}"]
upstreams:
  - {name: relay, base_url: "https://relay.example/v1", api_key: "${SECRET}"}
models:
  - {name: m, route: [relay]}
cache: {redis_url: "redis://:${SECRET}@127.0.0.1:6379/0"}
`

// FuzzParseSecrets: whatever the secret, neither an error from Parse nor
// the Redacted config shows it.
func FuzzParseSecrets(f *testing.F) {
	f.Add("sk-a-perfectly-normal-key-0123456789")
	f.Fuzz(func(t *testing.T, secret string) {
		// A short secret, or one that is part of the document, would be
		// "found" wherever the document's own text is quoted.
		if len(secret) < 8 || !utf8.ValidString(secret) || strings.Contains(secretsDoc, secret) ||
			strings.Contains("[redacted 0123456789 chars]", secret) {
			return
		}
		cfg, err := Parse([]byte(secretsDoc), func(string) (string, bool) { return secret, true })
		if err != nil {
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("the error shows the secret: %v", err)
			}
			return
		}
		if s := fmt.Sprintf("%+v", cfg.Redacted()); strings.Contains(s, secret) {
			t.Fatalf("Redacted shows the secret: %s", s)
		}
	})
}
