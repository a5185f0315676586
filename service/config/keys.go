package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Team is a group of named keys that shares a model allow-list, limits
// and a budget. Every limit is the team's as a whole, on top of each
// key's own.
type Team struct {
	Name string `yaml:"name"`
	// Models the team's keys may use; empty: every model.
	Models []string `yaml:"models,omitempty"`
	RPM    int      `yaml:"rpm,omitempty"`
	TPM    int      `yaml:"tpm,omitempty"`
	Budget *Budget  `yaml:"budget,omitempty"`
}

// Key is a named client key. A name may hold several keys (KeySHA256 and
// Key together), so a key is rotated by adding the new one, moving the
// clients over and removing the old one, with no moment when neither works.
type Key struct {
	Name string `yaml:"name"`
	// Team is the team the key belongs to; empty: none.
	Team string `yaml:"team,omitempty"`
	// KeySHA256 are hex SHA-256 sums of the key's secrets: a config that
	// holds only sums holds nothing a client could use. One or a list.
	KeySHA256 StringList `yaml:"key_sha256,omitempty"`
	// Key are the secrets themselves (usually ${VAR}). One or a list.
	Key    StringList `yaml:"key,omitempty"`
	Models []string   `yaml:"models,omitempty"`
	RPM    int        `yaml:"rpm,omitempty"`
	TPM    int        `yaml:"tpm,omitempty"`
	Budget *Budget    `yaml:"budget,omitempty"`
	// OnRedisError is what a request of this key gets when Redis, which
	// holds its limits and spend, cannot be asked: OnRedisErrorOpen (the
	// default) serves it, OnRedisErrorClosed refuses it. Both are counted.
	OnRedisError string `yaml:"on_redis_error,omitempty"`
	// Admission is when the key's limits and budget are checked in Redis:
	// AdmissionOverlap (the default) beside the upstream call, the answer
	// held back until the verdict, so a refusal may cost an upstream call
	// that is cancelled; AdmissionStrict before it, a round trip later.
	Admission string `yaml:"admission,omitempty"`
}

// Budget is a spend limit in US dollars per calendar period (UTC).
type Budget struct {
	USD    float64 `yaml:"usd,omitempty"`
	Period string  `yaml:"period,omitempty"`
}

// Budget periods and Redis failure modes.
const (
	PeriodDay   = "day"
	PeriodMonth = "month"

	OnRedisErrorOpen   = "open"
	OnRedisErrorClosed = "closed"

	AdmissionOverlap = "overlap"
	AdmissionStrict  = "strict"
)

// StringList is a YAML string or list of strings.
type StringList []string

// UnmarshalYAML accepts `x` as well as `[x, y]`.
func (l *StringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*l = StringList{n.Value}
		return nil
	}
	var v []string
	if err := n.Decode(&v); err != nil {
		return err
	}
	*l = v
	return nil
}

// Sums are the SHA-256 sums of every secret of the key, the configured
// sums and those of the plain keys. The loader has checked the sums' hex.
func (k *Key) Sums() [][sha256.Size]byte {
	var out [][sha256.Size]byte
	for _, h := range k.KeySHA256 {
		var s [sha256.Size]byte
		if b, err := hex.DecodeString(h); err == nil && len(b) == sha256.Size {
			copy(s[:], b)
			out = append(out, s)
		}
	}
	for _, p := range k.Key {
		out = append(out, sha256.Sum256([]byte(p)))
	}
	return out
}

// Limited reports whether anything of the key needs Redis: its limits or
// budget, or its team's.
func (c *Config) Limited(k *Key) bool {
	if k.RPM > 0 || k.TPM > 0 || k.Budget != nil {
		return true
	}
	t := c.Team(k.Team)
	return t != nil && (t.RPM > 0 || t.TPM > 0 || t.Budget != nil)
}

// Team returns the team with the given name, nil when there is none.
func (c *Config) Team(name string) *Team {
	for i := range c.Teams {
		if c.Teams[i].Name == name {
			return &c.Teams[i]
		}
	}
	return nil
}

func (k Key) redacted() Key {
	k.Key = slices.Clone(k.Key)
	for i := range k.Key {
		k.Key[i] = redact(k.Key[i])
	}
	k.KeySHA256 = slices.Clone(k.KeySHA256)
	for i, h := range k.KeySHA256 {
		// A sum is no key, but an unsalted one of a weak key can be
		// guessed: its start is enough to tell which one is meant.
		if len(h) > 8 {
			k.KeySHA256[i] = h[:8] + "…"
		}
	}
	return k
}

func (c *Config) applyKeyDefaults() {
	for i := range c.Keys {
		k := &c.Keys[i]
		if k.OnRedisError == "" {
			k.OnRedisError = OnRedisErrorOpen
		}
		if k.Admission == "" {
			k.Admission = AdmissionOverlap
		}
		for j := range k.KeySHA256 {
			k.KeySHA256[j] = strings.ToLower(strings.TrimSpace(k.KeySHA256[j]))
		}
		for j := range k.Key {
			k.Key[j] = strings.TrimSpace(k.Key[j])
		}
	}
}

// checkKeys validates teams and keys: names (they become metric labels)
// and references, and that no secret belongs to two keys.
func (l *loader) checkKeys(c *Config, unset map[string][]string) {
	models := map[string]bool{}
	for _, m := range c.Models {
		models[m.Name] = true
	}
	checkModels := func(p string, list []string) {
		for j, m := range list {
			if !models[m] {
				l.fail(fmt.Sprintf("%s.models[%d]", p, j), "model %q is not defined in models", m)
			}
		}
	}
	checkLimits := func(p string, rpm, tpm int, b *Budget) {
		if rpm < 0 || tpm < 0 {
			l.fail(p, "rpm and tpm must not be negative")
		}
		if b != nil {
			if b.USD <= 0 {
				l.fail(p+".budget.usd", "must be more than 0, got %v", b.USD)
			}
			if b.Period != PeriodDay && b.Period != PeriodMonth {
				l.fail(p+".budget.period", "%q: use day or month (calendar periods in UTC)", b.Period)
			}
		}
		if (rpm > 0 || tpm > 0 || b != nil) && c.Cache.RedisURL == "" {
			l.fail(p, "limits and budgets are kept in Redis so replicas share them: set cache.redis_url")
		}
	}
	teams := map[string]bool{}
	for i := range c.Teams {
		t := &c.Teams[i]
		p := fmt.Sprintf("teams[%d]", i)
		l.checkName(p, t.Name, teams, "")
		checkModels(p, t.Models)
		checkLimits(p, t.RPM, t.TPM, t.Budget)
	}

	owner := map[[sha256.Size]byte]string{}
	for i, k := range c.ClientKeys {
		owner[sha256.Sum256([]byte(k))] = fmt.Sprintf("client_keys[%d]", i)
	}
	names := map[string]bool{}
	for i := range c.Keys {
		k := &c.Keys[i]
		p := fmt.Sprintf("keys[%d]", i)
		l.checkName(p, k.Name, names, "; list a name's keys (for rotation) in one entry: key_sha256: [old, new]")
		if k.Team != "" && !teams[k.Team] {
			l.fail(p+".team", "team %q is not defined in teams", k.Team)
		}
		if len(k.KeySHA256) == 0 && len(k.Key) == 0 {
			l.fail(p, "needs key_sha256 (hex SHA-256 of the key) or key")
		}
		for j, h := range k.KeySHA256 {
			hp := listPath(p+".key_sha256", j, len(k.KeySHA256))
			if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
				l.fail(hp, "is not a SHA-256 sum: write 64 hex digits (e.g. printf %%s \"$KEY\" | sha256sum)")
				continue
			}
			var s [sha256.Size]byte
			b, _ := hex.DecodeString(h)
			copy(s[:], b)
			l.claim(owner, s, hp)
		}
		for j, v := range k.Key {
			kp := listPath(p+".key", j, len(k.Key))
			vars, ok := unset[kp]
			if !ok {
				vars, ok = unset[fmt.Sprintf("%s.key[%d]", p, j)]
			}
			if ok {
				l.fail(kp, "environment variable %s is not set", strings.Join(vars, ", "))
				continue
			}
			if len(v) < 16 {
				l.fail(kp, "is %d characters; use at least 16 so it cannot be guessed", len(v))
				continue
			}
			l.claim(owner, sha256.Sum256([]byte(v)), kp)
		}
		checkModels(p, k.Models)
		checkLimits(p, k.RPM, k.TPM, k.Budget)
		if k.OnRedisError != OnRedisErrorOpen && k.OnRedisError != OnRedisErrorClosed {
			l.fail(p+".on_redis_error", "%q: use open (serve while Redis is unreachable) or closed (refuse)", k.OnRedisError)
		}
		if k.Admission != AdmissionOverlap && k.Admission != AdmissionStrict {
			l.fail(p+".admission", "%q: use overlap (check beside the upstream call) or strict (before it)", k.Admission)
		}
	}
}

// claim records that the secret with sum s is at path p, failing when
// another key already has it: one secret must name one key.
func (l *loader) claim(owner map[[sha256.Size]byte]string, s [sha256.Size]byte, p string) {
	if o, ok := owner[s]; ok {
		l.fail(p, "is the same key as %s", o)
		return
	}
	owner[s] = p
}

// listPath is the path of item j of a StringList: the key itself when it
// was written as one value.
func listPath(p string, j, n int) string {
	if n == 1 {
		return p
	}
	return fmt.Sprintf("%s[%d]", p, j)
}
