package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

func sum(k string) string { s := sha256.Sum256([]byte(k)); return hex.EncodeToString(s[:]) }

const keysBase = minimal + `
cache: {redis_url: "redis://127.0.0.1:6379/0"}
`

func TestKeysAndTeams(t *testing.T) {
	doc := keysBase + `
client_keys: ["plain-client-key-0123456789"]
teams:
  - name: search
    models: [gpt-4.1]
    rpm: 600
    tpm: 2000000
    budget: {usd: 500, period: month}
keys:
  - name: search-backend
    team: search
    key_sha256: [` + strings.ToUpper(sum("old-search-key-0123456789")) + `, ` + sum("new-search-key-0123456789") + `]
    key: ${SEARCH_KEY}
    models: [gpt-4.1]
    rpm: 120
    budget: {usd: 50, period: day}
    on_redis_error: closed
    admission: strict
  - name: batch
    key_sha256: ` + sum("batch-key-0123456789abc") + `
`
	cfg, err := Parse([]byte(doc), env(map[string]string{"RELAY_KEY": "k", "SEARCH_KEY": "env-search-key-0123456789\n"}))
	if err != nil {
		t.Fatal(err)
	}
	k := cfg.Keys[0]
	if len(k.Sums()) != 3 {
		t.Fatalf("search-backend has %d sums, want 3 (two hashes and one key)", len(k.Sums()))
	}
	for i, secret := range []string{"old-search-key-0123456789", "new-search-key-0123456789", "env-search-key-0123456789"} {
		if k.Sums()[i] != sha256.Sum256([]byte(secret)) {
			t.Errorf("sum %d is not that of %q", i, secret)
		}
	}
	if cfg.Keys[1].OnRedisError != OnRedisErrorOpen || k.OnRedisError != OnRedisErrorClosed {
		t.Errorf("on_redis_error = %q, %q; want closed, and open by default", k.OnRedisError, cfg.Keys[1].OnRedisError)
	}
	if cfg.Keys[1].Admission != AdmissionOverlap || k.Admission != AdmissionStrict {
		t.Errorf("admission = %q, %q; want strict, and overlap by default", k.Admission, cfg.Keys[1].Admission)
	}
	if !cfg.Limited(&cfg.Keys[0]) || cfg.Limited(&cfg.Keys[1]) {
		t.Error("Limited: search-backend has limits, batch (no team, no limits) has none")
	}
	if cfg.Team("search").Budget.USD != 500 {
		t.Error("team budget not read")
	}
	red := cfg.Redacted()
	out := fmt.Sprintf("%+v", red.Keys)
	for _, secret := range []string{"env-search-key", sum("new-search-key-0123456789")} {
		if strings.Contains(out, secret) {
			t.Errorf("Redacted() shows %q: %s", secret, out)
		}
	}
	if cfg.Keys[0].Key[0] != "env-search-key-0123456789" {
		t.Error("Redacted changed the config itself")
	}
}

func TestBrokenKeys(t *testing.T) {
	cases := []struct{ name, doc, want string }{
		{"unknown team", `keys: [{name: a, team: nope, key_sha256: ` + sum("a-key-0123456789abcdef") + `}]`,
			`line 12: keys[0].team: team "nope" is not defined in teams`},
		{"duplicate key name", `keys:
  - {name: a, key_sha256: ` + sum("a-key-0123456789abcdef") + `}
  - {name: a, key_sha256: ` + sum("b-key-0123456789abcdef") + `}`,
			`line 14: keys[1].name: "a" is defined twice`},
		{"duplicate team name", `teams: [{name: t}, {name: t}]`, `keys: `},
		{"duplicate hash", `keys:
  - {name: a, key_sha256: ` + sum("a-key-0123456789abcdef") + `}
  - {name: b, key: a-key-0123456789abcdef}`,
			`line 14: keys[1].key: is the same key as keys[0].key_sha256`},
		{"same as client_keys", `client_keys: [a-key-0123456789abcdef]
keys: [{name: a, key_sha256: ` + sum("a-key-0123456789abcdef") + `}]`,
			`keys[0].key_sha256: is the same key as client_keys[0]`},
		{"bad hex", `keys: [{name: a, key_sha256: [` + sum("x-key-0123456789abcdef") + `, xyz]}]`,
			`line 12: keys[0].key_sha256[1]: is not a SHA-256 sum`},
		{"bad period", `keys: [{name: a, key_sha256: ` + sum("a-key-0123456789abcdef") + `, budget: {usd: 5, period: week}}]`,
			`keys[0].budget.period: "week": use day or month`},
		{"zero budget", `teams: [{name: t, budget: {usd: 0, period: day}}]`, `teams[0].budget.usd: must be more than 0`},
		{"bad name", `keys: [{name: "a b", key_sha256: ` + sum("a-key-0123456789abcdef") + `}]`, `keys[0].name: "a b": use letters`},
		{"no secret", `keys: [{name: a}]`, `keys[0]: needs key_sha256`},
		{"short key", `keys: [{name: a, key: short}]`, `keys[0].key: is 5 characters`},
		{"unset key", `keys: [{name: a, key: ["${NOPE}"]}]`, `keys[0].key: environment variable NOPE is not set`},
		{"unknown model", `keys: [{name: a, key_sha256: ` + sum("a-key-0123456789abcdef") + `, models: [gpt-9]}]`,
			`keys[0].models[0]: model "gpt-9" is not defined in models`},
		{"bad on_redis_error", `keys: [{name: a, key_sha256: ` + sum("a-key-0123456789abcdef") + `, on_redis_error: maybe}]`,
			`keys[0].on_redis_error: "maybe"`},
		{"bad admission", `keys: [{name: a, key_sha256: ` + sum("a-key-0123456789abcdef") + `, admission: later}]`,
			`keys[0].admission: "later"`},
		{"unknown field", `keys: [{name: a, key_sha256: ` + sum("a-key-0123456789abcdef") + `, rmp: 3}]`, `unknown key "rmp"`},
	}
	cases[2].want = `line 12: teams[1].name: "t" is defined twice`
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(keysBase+c.doc), env(map[string]string{"RELAY_KEY": "k"}))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v\nwant it to contain %q", err, c.want)
			}
		})
	}
}

func TestLimitsNeedRedis(t *testing.T) {
	doc := minimal + `keys: [{name: a, key_sha256: ` + sum("a-key-0123456789abcdef") + `, rpm: 5}]`
	_, err := Parse([]byte(doc), env(map[string]string{"RELAY_KEY": "k"}))
	if err == nil || !strings.Contains(err.Error(), "keys[0]: limits and budgets are kept in Redis") {
		t.Fatalf("error = %v", err)
	}
	// An allow-list alone needs no Redis.
	doc = minimal + `keys: [{name: a, key_sha256: ` + sum("a-key-0123456789abcdef") + `, models: [gpt-4.1]}]`
	if _, err := Parse([]byte(doc), env(map[string]string{"RELAY_KEY": "k"})); err != nil {
		t.Fatal(err)
	}
}
