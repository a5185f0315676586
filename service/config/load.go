package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// LoadFile reads and validates the configuration at path.
func LoadFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := Parse(data, os.LookupEnv)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes and validates a YAML document. lookup resolves `${VAR}`
// references (os.LookupEnv in production). Every problem found is reported,
// each prefixed with its line and key, joined in one error.
func Parse(data []byte, lookup func(string) (string, bool)) (*Config, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("file is empty")
		}
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	if len(doc.Content) == 0 {
		return nil, errors.New("file is empty")
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the top level must be a mapping of keys", root.Line)
	}

	l := &loader{root: root}
	l.checkKnown(root, reflect.TypeOf(Config{}), "")
	unset, expanded := expandEnv(root, lookup, "")
	l.expanded = expanded
	if len(l.errs) > 0 {
		return nil, errors.Join(l.errs...)
	}

	var cfg Config
	if err := root.Decode(&cfg); err != nil {
		return nil, l.withKeys(err)
	}
	cfg.applyDefaults()
	trimSecrets(&cfg)
	l.validate(&cfg, unset)
	if len(l.errs) > 0 {
		return nil, errors.Join(l.errs...)
	}
	return &cfg, nil
}

// trimSecrets removes whitespace around keys. Secrets mounted from files
// (Kubernetes, Docker) usually end in a newline that ${VAR} carries in:
// presented client keys are trimmed, so an untrimmed configured one never
// matches, and a newline in an upstream key makes an invalid Authorization
// header. A key blank once trimmed is an empty one (and, from a variable,
// an unset one: expandEnv reports it).
func trimSecrets(c *Config) {
	for i := range c.ClientKeys {
		c.ClientKeys[i] = strings.TrimSpace(c.ClientKeys[i])
	}
	for i := range c.Upstreams {
		c.Upstreams[i].APIKey = strings.TrimSpace(c.Upstreams[i].APIKey)
	}
	c.Admin.Key = strings.TrimSpace(c.Admin.Key)
	c.Ledger.PostgresURL = strings.TrimSpace(c.Ledger.PostgresURL)
}

// UnmarshalYAML accepts only strings with a unit.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!int" || n.Tag == "!!float" {
		return fmt.Errorf("line %d: %q is not a duration: write it with a unit, e.g. 30s or 200ms", n.Line, n.Value)
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration: write it with a unit, e.g. 30s or 200ms", n.Line, n.Value)
	}
	if v < 0 {
		return fmt.Errorf("line %d: duration %q is negative", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// UnmarshalYAML accepts `holysheep`, `{upstream: openai, model: gpt-4.1}`
// or a pool, `{pool: [gpu-a, gpu-b], balance: least_busy}`.
func (e *RouteEntry) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		e.Upstream = n.Value
		return nil
	}
	type plain RouteEntry
	return n.Decode((*plain)(e))
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// expandEnv replaces ${VAR} in every scalar below n and returns the paths of
// values that referenced a variable which is not set, with the variables,
// and the lines of the values it expanded.
func expandEnv(n *yaml.Node, lookup func(string) (string, bool), path string) (unset map[string][]string, expanded map[int]bool) {
	unset, expanded = map[string][]string{}, map[int]bool{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.ScalarNode:
			if !strings.Contains(n.Value, "${") {
				return
			}
			n.Value = envRef.ReplaceAllStringFunc(n.Value, func(ref string) string {
				name := ref[2 : len(ref)-1]
				v, ok := lookup(name)
				// Blank counts as empty: a secret file holding just a
				// newline is no key (see trimSecrets).
				if !ok || strings.TrimSpace(v) == "" {
					unset[path] = append(unset[path], name)
				}
				return v
			})
			expanded[n.Line] = true
			// An expanded value is data, never YAML: it is typed by what
			// it holds, so that `rpm: ${RPM}` with RPM=60 is a number (and
			// "${RPM}" too, as a flow mapping needs the quotes), while a
			// key that happens to look like null stays a string. String
			// fields take the text as it is, a number-like key included.
			if n.Style&yaml.TaggedStyle == 0 {
				n.Tag = expandedTag(n.Value)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				walk(n.Content[i+1], joinPath(path, n.Content[i].Value))
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	walk(n, path)
	return unset, expanded
}

// expandedTag is the tag of an expanded value: what yaml makes of the
// text, when that is a number or a boolean (so it decodes into numeric and
// boolean fields), else a string.
func expandedTag(v string) string {
	// Resolved as the plain scalar it would be, not parsed as a document:
	// " 0" must stay a string, as it would be in the file.
	var x any
	if err := (&yaml.Node{Kind: yaml.ScalarNode, Value: v}).Decode(&x); err == nil {
		// Explicit tags: a quoted value would be a string whatever it
		// holds, and a flow mapping needs the quotes around ${VAR}.
		switch x.(type) {
		case int, int64, uint64:
			return "!!int"
		case float64:
			return "!!float"
		case bool:
			return "!!bool"
		}
	}
	return "!!str"
}

var (
	lineRef = regexp.MustCompile(`line (\d+): `)
	// quotedValue is a value as yaml (`…`) or the Duration decoder ("…")
	// quotes it in a message.
	quotedValue = regexp.MustCompile("`[^`]*`|\"(?:[^\"\\\\]|\\\\.)*\"")
)

// keyAt is a value's key path, found by its line.
type keyAt struct {
	path  string
	value *yaml.Node
}

// withKeys rewrites a decoding error so each "line N:" also names the key
// at that line: yaml's own messages give only the line. A line of a flow
// mapping (`retry: {attempts: 3, backoff_min: 200}`) holds several keys:
// the one meant is the one whose value the message quotes.
func (l *loader) withKeys(err error) error {
	keys := map[int][]keyAt{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				p := joinPath(path, n.Content[i].Value)
				v := n.Content[i+1]
				keys[v.Line] = append(keys[v.Line], keyAt{p, v})
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if len(keys[c.Line]) == 0 || c.Kind == yaml.ScalarNode {
					keys[c.Line] = append(keys[c.Line], keyAt{p, c})
				}
				walk(c, p)
			}
		}
	}
	walk(l.root, "")
	pathAt := func(line int, msg string) (string, bool) {
		cands := keys[line]
		if len(cands) == 0 {
			return "", false
		}
		var quoted []string
		for _, k := range cands {
			if k.value.Kind == yaml.ScalarNode &&
				(strings.Contains(msg, "`"+k.value.Value+"`") || strings.Contains(msg, strconv.Quote(k.value.Value))) {
				quoted = append(quoted, k.path)
			}
		}
		if len(quoted) > 0 {
			return strings.Join(quoted, " or "), true
		}
		return cands[len(cands)-1].path, true
	}
	lines := strings.Split(strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n"), "\n")
	for i, line := range lines {
		m := lineRef.FindStringSubmatchIndex(line)
		if m == nil {
			if len(l.expanded) > 0 {
				lines[i] = quotedValue.ReplaceAllLiteralString(line, "(a value)")
			}
			continue
		}
		n, _ := strconv.Atoi(line[m[2]:m[3]])
		rest := line[m[1]:]
		if l.expanded[n] {
			// yaml quotes the start of the value, which came from the
			// environment and may well be a secret.
			rest = quotedValue.ReplaceAllLiteralString(rest, "(the value of its ${VAR})")
		}
		if p, ok := pathAt(n, rest); ok {
			rest = p + ": " + rest
		}
		lines[i] = line[:m[1]] + rest
	}
	return errors.New(strings.TrimSpace(strings.Join(lines, "\n")))
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

type loader struct {
	root *yaml.Node
	errs []error
	// expanded holds the lines of values that came from ${VAR}.
	expanded map[int]bool
}

func (l *loader) fail(path string, format string, args ...any) {
	line := l.line(path)
	msg := fmt.Sprintf(format, args...)
	if line > 0 {
		l.errs = append(l.errs, fmt.Errorf("line %d: %s: %s", line, path, msg))
		return
	}
	l.errs = append(l.errs, fmt.Errorf("%s: %s", path, msg))
}

// line finds the line of a dotted path such as "upstreams[1].base_url"; for
// a key the file omits it falls back to the nearest parent that exists.
func (l *loader) line(path string) int {
	n, line := l.root, 0
	for _, part := range splitPath(path) {
		var next *yaml.Node
		switch p := part.(type) {
		case int:
			if n.Kind == yaml.SequenceNode && p < len(n.Content) {
				next = n.Content[p]
				line = next.Line
			}
		case string:
			for i := 0; n.Kind == yaml.MappingNode && i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == p {
					next = n.Content[i+1]
					line = n.Content[i].Line
					break
				}
			}
		}
		if next == nil {
			break
		}
		n = next
	}
	return line
}

func splitPath(path string) []any {
	var out []any
	for _, seg := range strings.Split(path, ".") {
		name, rest, _ := strings.Cut(seg, "[")
		if name != "" {
			out = append(out, name)
		}
		for rest != "" {
			var idx int
			num, after, _ := strings.Cut(rest, "]")
			fmt.Sscanf(num, "%d", &idx)
			out = append(out, idx)
			_, rest, _ = strings.Cut(after, "[")
		}
	}
	return out
}

// checkKnown reports keys that match no field, since yaml.Node.Decode would
// drop them silently and `timout: 5s` would mean the default.
func (l *loader) checkKnown(n *yaml.Node, t reflect.Type, path string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == reflect.TypeOf(RouteEntry{}) && n.Kind == yaml.ScalarNode:
		return
	case t == reflect.TypeOf(RouteEntry{}) && n.Kind == yaml.MappingNode:
		// A pool's members are names: a mapping there is most likely a
		// pool nested in a pool, which would only ever be one pool.
		for i := 0; i+1 < len(n.Content); i += 2 {
			if v := n.Content[i+1]; n.Content[i].Value == "pool" && v.Kind == yaml.SequenceNode {
				for j, c := range v.Content {
					if c.Kind != yaml.ScalarNode {
						l.errs = append(l.errs, fmt.Errorf("line %d: %s.pool[%d]: a pool's members are upstream names; a pool cannot hold another pool (list its upstreams in this one)",
							c.Line, path, j))
					}
				}
			}
		}
		l.checkStruct(n, t, path)
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		l.checkStruct(n, t, path)
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, c := range n.Content {
			l.checkKnown(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	}
}

// checkStruct reports the keys of mapping n that match no field of t.
func (l *loader) checkStruct(n *yaml.Node, t reflect.Type, path string) {
	{
		fields := map[string]reflect.Type{}
		var names []string
		for i := 0; i < t.NumField(); i++ {
			tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			fields[tag] = t.Field(i).Type
			names = append(names, tag)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i]
			ft, ok := fields[key.Value]
			if !ok {
				l.errs = append(l.errs, fmt.Errorf("line %d: %s: unknown key %q (known keys: %s)",
					key.Line, orTop(path), key.Value, strings.Join(names, ", ")))
				continue
			}
			l.checkKnown(n.Content[i+1], ft, joinPath(path, key.Value))
		}
	}
}

func orTop(path string) string {
	if path == "" {
		return "top level"
	}
	return path
}

var upstreamName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// checkName checks the name of the entry at p (an upstream, team or key):
// set, of upstreamName's characters, and not already in seen, which it
// joins. twice, when set, follows the message of a name defined twice.
func (l *loader) checkName(p, name string, seen map[string]bool, twice string) {
	switch {
	case name == "":
		l.fail(p+".name", "is required")
	case !upstreamName.MatchString(name):
		l.fail(p+".name", "%q: use letters, digits, '.', '_' or '-' (at most 63)", name)
	case seen[name]:
		l.fail(p+".name", "%q is defined twice%s", name, twice)
	}
	seen[name] = true
}

func (l *loader) validate(c *Config, unset map[string][]string) {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		l.fail("listen", "%q is not host:port (e.g. \":8000\" or \"127.0.0.1:8000\")", c.Listen)
	}
	if c.MaxBodyBytes < 1024 {
		l.fail("max_body_bytes", "must be at least 1024, got %d", c.MaxBodyBytes)
	}
	if c.MaxConnections < -1 {
		l.fail("max_connections", "must be -1 (no limit), 0 (half the open-file limit) or a positive number, got %d", c.MaxConnections)
	}
	if c.MaxConnectionsPerIP < 0 {
		l.fail("max_connections_per_ip", "must not be negative (0: no limit), got %d", c.MaxConnectionsPerIP)
	}
	if c.BufferBudgetBytes < MinBufferBudgetBytes {
		l.fail("buffer_budget_bytes", "must be at least %d (1 MiB), got %d", MinBufferBudgetBytes, c.BufferBudgetBytes)
	}
	for i, k := range c.ClientKeys {
		p := fmt.Sprintf("client_keys[%d]", i)
		if vars, ok := unset[p]; ok {
			l.fail(p, "environment variable %s is not set; set it, or remove client_keys to run without auth", strings.Join(vars, ", "))
		} else if strings.TrimSpace(k) == "" {
			l.fail(p, "is empty")
		} else if len(k) < 16 {
			l.fail(p, "is %d characters; use at least 16 so it cannot be guessed", len(k))
		}
	}

	if len(c.Upstreams) == 0 {
		l.fail("upstreams", "at least one upstream is required")
	}
	seen := map[string]bool{}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		p := fmt.Sprintf("upstreams[%d]", i)
		l.checkName(p, u.Name, seen, "")
		if vars, ok := unset[p+".base_url"]; ok {
			// An optional tier (model servers on GPU hosts that a stack
			// may not have): off, said loudly, like an unset key.
			u.Disabled = fmt.Sprintf("base_url: environment variable %s is not set", strings.Join(vars, ", "))
			c.Warnings = append(c.Warnings, fmt.Sprintf("upstream %s is disabled: %s", u.Name, u.Disabled))
		} else if err := checkBaseURL(u.BaseURL); err != nil {
			l.fail(p+".base_url", "%v", err)
		}
		if vars, ok := unset[p+".api_key"]; ok && u.Disabled == "" {
			u.Disabled = fmt.Sprintf("api_key: environment variable %s is not set", strings.Join(vars, ", "))
			c.Warnings = append(c.Warnings, fmt.Sprintf("upstream %s is disabled: %s", u.Name, u.Disabled))
		}
		if u.ConnectTimeout > u.Timeout {
			l.fail(p+".connect_timeout", "%s is longer than timeout %s", u.ConnectTimeout, u.Timeout)
		}
		if u.MaxIdleConns < 0 {
			l.fail(p+".max_idle_conns", "must not be negative")
		}
		l.checkAPIs(p, u)
		if u.Auth != AuthBearer && u.Auth != AuthXAPIKey {
			l.fail(p+".auth", "%q: use %s (Authorization: Bearer) or %s (Anthropic's native API)", u.Auth, AuthBearer, AuthXAPIKey)
		}
		if u.ResponseRetention < 0 {
			l.fail(p+".response_retention", "must not be negative")
		}
		l.checkSelfHosted(p, u)
	}

	if len(c.Models) == 0 {
		l.fail("models", "at least one model is required")
	}
	seenModel := map[string]bool{}
	for i := range c.Models {
		m := &c.Models[i]
		p := fmt.Sprintf("models[%d]", i)
		switch {
		case m.Name == "":
			l.fail(p+".name", "is required")
		case seenModel[m.Name]:
			l.fail(p+".name", "%q is defined twice", m.Name)
		}
		seenModel[m.Name] = true
		if len(m.Route) == 0 {
			l.fail(p+".route", "needs at least one upstream")
		}
		inRoute := map[string]bool{}
		for j, e := range m.Route {
			rp := fmt.Sprintf("%s.route[%d]", p, j)
			if e.Pool != nil || e.Balance != "" || e.Weights != nil {
				l.checkPool(c, rp, e, inRoute)
			} else {
				if _, ok := c.Upstream(e.Upstream); !ok {
					l.fail(rp, "upstream %q is not defined in upstreams", e.Upstream)
				}
				if inRoute[e.Upstream] {
					l.fail(rp, "upstream %q appears twice in the route", e.Upstream)
				}
				inRoute[e.Upstream] = true
			}
			if e.Price != nil {
				l.checkPrice(rp+".price", *e.Price)
			}
		}
		l.checkPrice(p+".price", m.Price)
		if m.ReferencePrice != nil {
			l.checkPrice(p+".reference_price", *m.ReferencePrice)
		}
	}

	if c.Retry.Attempts < 1 || c.Retry.Attempts > 10 {
		l.fail("retry.attempts", "must be between 1 and 10, got %d", c.Retry.Attempts)
	}
	if c.Retry.BackoffMax < c.Retry.BackoffMin {
		l.fail("retry.backoff_max", "%s is shorter than backoff_min %s", c.Retry.BackoffMax, c.Retry.BackoffMin)
	}
	if c.CircuitBreaker.Failures < 1 {
		l.fail("circuit_breaker.failures", "must be at least 1")
	}
	if c.Cache.RedisURL != "" {
		if vars, ok := unset["cache.redis_url"]; ok {
			l.fail("cache.redis_url", "environment variable %s is not set", strings.Join(vars, ", "))
		} else if u, err := url.Parse(c.Cache.RedisURL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix") {
			l.fail("cache.redis_url", "must be a redis://, rediss:// or unix:// URL")
		} else if u.Fragment != "" || (strings.Contains(c.Cache.RedisURL, "@") && u.User == nil) ||
			(u.User != nil && strings.ContainsAny(u.Host+u.Path, "@#?")) {
			l.fail("cache.redis_url", "cannot be read unambiguously: percent-encode special characters ('#', '/', '?', '@') in the password")
		}
	}
	switch c.Cache.Scope {
	case CacheScopeKey, CacheScopeTeam, CacheScopeGlobal:
	default:
		l.fail("cache.scope", "%q: use key (each client key its own cache), team or global (every client shares)", c.Cache.Scope)
	}
	if c.RateLimit.RPM < 0 || c.RateLimit.TPM < 0 {
		l.fail("rate_limit", "limits must not be negative")
	}
	if (c.RateLimit.RPM > 0 || c.RateLimit.TPM > 0) && c.Cache.RedisURL == "" {
		l.fail("rate_limit", "limits are kept in Redis so replicas share them: set cache.redis_url")
	}
	if c.GPU.ExpectedCount < 0 {
		l.fail("gpu.expected_count", "must not be negative")
	}
	if c.Admin.Listen != "" {
		if _, port, err := net.SplitHostPort(c.Admin.Listen); err != nil {
			l.fail("admin.listen", "%q is not host:port (e.g. \"127.0.0.1:9100\")", c.Admin.Listen)
		} else if c.Admin.Listen == c.Listen && port != "0" {
			l.fail("admin.listen", "is the same address as listen")
		}
	}
	if vars, ok := unset["admin.key"]; ok {
		l.fail("admin.key", "environment variable %s is not set", strings.Join(vars, ", "))
	} else if c.Admin.Key != "" && len(c.Admin.Key) < 16 {
		l.fail("admin.key", "is %d characters; use at least 16", len(c.Admin.Key))
	}
	l.checkCORS(&c.CORS)
	l.checkLedger(&c.Ledger, unset)
	l.checkKeys(c, unset)
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		l.fail("log.level", "%q: use debug, info, warn or error", c.Log.Level)
	}
}

// checkPool validates a pool entry of a route: known, distinct members
// (none also elsewhere in the route), a known balance, and weights only for
// members of a weighted pool.
func (l *loader) checkPool(c *Config, rp string, e RouteEntry, inRoute map[string]bool) {
	if e.Upstream != "" {
		l.fail(rp+".upstream", "an entry is either one upstream or a pool: move %q into pool, or drop pool", e.Upstream)
	}
	if len(e.Pool) == 0 {
		l.fail(rp+".pool", "is empty; list the upstreams the pool shares its traffic among")
	}
	for k, name := range e.Pool {
		pp := fmt.Sprintf("%s.pool[%d]", rp, k)
		if _, ok := c.Upstream(name); !ok {
			l.fail(pp, "upstream %q is not defined in upstreams", name)
		}
		if inRoute[name] {
			l.fail(pp, "upstream %q appears twice in the route", name)
		}
		inRoute[name] = true
	}
	switch e.Balance {
	case BalanceLeastBusy, BalanceWeighted:
	default:
		l.fail(rp+".balance", "%q: use %s (fewest requests outstanding) or %s (shares by weights)", e.Balance, BalanceLeastBusy, BalanceWeighted)
	}
	if e.Weights != nil && e.Balance != BalanceWeighted {
		l.fail(rp+".weights", "are only read by balance: %s", BalanceWeighted)
	}
	names := make([]string, 0, len(e.Weights))
	for name := range e.Weights {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		wp := rp + ".weights." + name
		if !slices.Contains(e.Pool, name) {
			l.fail(wp, "%q is not a member of the pool", name)
		} else if e.Weights[name] < 1 {
			l.fail(wp, "must be at least 1, got %d (to take a member out, remove it from the pool)", e.Weights[name])
		}
	}
}

// checkSelfHosted validates an upstream's health probe and hourly cost.
func (l *loader) checkSelfHosted(p string, u *Upstream) {
	if h := u.Health; h != nil {
		hp := p + ".health"
		if !strings.HasPrefix(h.Path, "/") {
			l.fail(hp+".path", "%q must start with '/': it is a path on the base URL's host", h.Path)
		} else if pu, err := url.Parse(h.Path); err != nil || pu.Host != "" || pu.Fragment != "" {
			l.fail(hp+".path", "%q is not a path", h.Path)
		}
		if h.Interval.D() < MinHealthInterval {
			l.fail(hp+".interval", "%s is shorter than %s", h.Interval, MinHealthInterval)
		}
		if h.Timeout > h.Interval {
			l.fail(hp+".timeout", "%s is longer than interval %s", h.Timeout, h.Interval)
		}
		if h.HealthyThreshold < 1 || h.HealthyThreshold > 10 {
			l.fail(hp+".healthy_threshold", "must be between 1 and 10, got %d", h.HealthyThreshold)
		}
		if h.UnhealthyThreshold < 1 || h.UnhealthyThreshold > 10 {
			l.fail(hp+".unhealthy_threshold", "must be between 1 and 10, got %d", h.UnhealthyThreshold)
		}
		if h.SendKey && u.APIKey == "" && u.Disabled == "" {
			l.fail(hp+".send_key", "the upstream has no api_key to send")
		}
	}
	switch {
	case u.HourlyCostUSD < 0:
		l.fail(p+".hourly_cost_usd", "must not be negative")
	case u.TokensPerHour < 0:
		l.fail(p+".tokens_per_hour", "must not be negative")
	case u.HourlyCostUSD > 0 && u.TokensPerHour == 0:
		l.fail(p+".tokens_per_hour", "is needed with hourly_cost_usd: the hourly cost is spread over the tokens an hour serves")
	case u.HourlyCostUSD == 0 && u.TokensPerHour > 0:
		l.fail(p+".hourly_cost_usd", "is needed with tokens_per_hour, which only spreads it")
	}
}

// checkAPIs validates an upstream's apis, or gives it its vendor's
// default when the file has none.
func (l *loader) checkAPIs(p string, u *Upstream) {
	if u.APIs == nil {
		u.APIs = DefaultAPIs(u.BaseURL)
		return
	}
	if len(u.APIs) == 0 {
		l.fail(p+".apis", "names no API; list the APIs the upstream speaks (%s), or remove the key for its default", strings.Join(KnownAPIs, ", "))
		return
	}
	seen := map[string]bool{}
	for i, a := range u.APIs {
		ap := fmt.Sprintf("%s.apis[%d]", p, i)
		switch {
		case !slices.Contains(KnownAPIs, a):
			l.fail(ap, "unknown API %q (known APIs: %s)", a, strings.Join(KnownAPIs, ", "))
		case seen[a]:
			l.fail(ap, "%q is listed twice", a)
		}
		seen[a] = true
	}
}

var headerName = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

// checkCORS validates the allowed origins (each exact, as a browser sends
// it: scheme://host[:port], no path) and headers.
func (l *loader) checkCORS(c *CORS) {
	if !c.Enabled() {
		if len(c.AllowedHeaders) > 0 || c.MaxAge != 0 {
			l.fail("cors.allowed_origins", "is empty, so CORS is off and allowed_headers and max_age do nothing; list the origins to allow (or \"*\")")
		}
		return
	}
	for i, o := range c.AllowedOrigins {
		p := fmt.Sprintf("cors.allowed_origins[%d]", i)
		if o == "*" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(o, "/") {
			l.fail(p, "%q is not an origin: write it as the browser sends it, scheme://host[:port] with no path (e.g. \"https://app.example.com\"), or \"*\" for any", o)
		}
	}
	for i, h := range c.AllowedHeaders {
		if !headerName.MatchString(h) {
			l.fail(fmt.Sprintf("cors.allowed_headers[%d]", i), "%q is not a header name", h)
		}
	}
	if c.MaxAge.D() > 24*time.Hour {
		l.fail("cors.max_age", "%s is over 24h, longer than browsers keep a preflight", c.MaxAge)
	}
}

// checkLedger validates the ledger's settings. Its URL is never quoted in a
// message: it may hold a password.
func (l *loader) checkLedger(c *Ledger, unset map[string][]string) {
	if vars, ok := unset["ledger.postgres_url"]; ok {
		l.fail("ledger.postgres_url", "environment variable %s is not set; set it, or remove ledger.postgres_url to run without the ledger", strings.Join(vars, ", "))
		return
	}
	if !c.Enabled() {
		if c.SpillDir != "" || c.BatchInterval != 0 || c.BatchRows != 0 || c.QueueRows != 0 || c.FsyncInterval != 0 || c.WriteTimeout != 0 {
			l.fail("ledger.postgres_url", "is empty, so the ledger is off and its other settings do nothing; set postgres_url, or remove the ledger section")
		}
		return
	}
	u, err := url.Parse(c.PostgresURL)
	switch {
	case strings.Contains(c.PostgresURL, "@") && (err != nil || u.User == nil || u.Fragment != "" || strings.ContainsAny(u.Host+u.Path, "@#?")):
		l.fail("ledger.postgres_url", "cannot be read unambiguously: percent-encode special characters ('#', '/', '?', '@') in the password")
	case err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || (u.Host == "" && u.Query().Get("host") == ""):
		l.fail("ledger.postgres_url", "must be a postgres:// or postgresql:// URL with a host (e.g. postgres://relaygate@db.internal:5432/relaygate)")
	}
	if c.BatchInterval.D() < time.Millisecond || c.BatchInterval.D() > time.Minute {
		l.fail("ledger.batch_interval", "%s: use between 1ms and 1m", c.BatchInterval)
	}
	if c.FsyncInterval.D() < time.Millisecond || c.FsyncInterval.D() > time.Minute {
		l.fail("ledger.fsync_interval", "%s: use between 1ms and 1m; a crash loses at most this much of the spilled rows", c.FsyncInterval)
	}
	if c.WriteTimeout.D() < 10*time.Millisecond {
		l.fail("ledger.write_timeout", "%s is under 10ms, too short for a round trip to Postgres", c.WriteTimeout)
	}
	if c.BatchRows < 1 || c.BatchRows > 100000 {
		l.fail("ledger.batch_rows", "must be between 1 and 100000, got %d", c.BatchRows)
	}
	if c.QueueRows < 1 || c.QueueRows > 10000000 {
		l.fail("ledger.queue_rows", "must be between 1 and 10000000, got %d", c.QueueRows)
	}
}

func (l *loader) checkPrice(path string, p Price) {
	if p.InputPerMTok < 0 || p.OutputPerMTok < 0 || p.CacheWrite() < 0 || p.CacheRead() < 0 {
		l.fail(path, "prices must not be negative")
	}
}

func checkBaseURL(raw string) error {
	if raw == "" {
		return errors.New("is required")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return fmt.Errorf("%q is not an absolute http(s) URL", RedactURL(raw))
	}
	if u.User != nil {
		return errors.New("must not carry credentials; use api_key")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return errors.New("must not have a query or fragment")
	}
	return nil
}

// RedactPostgresURL hides a Postgres URL's password, in its user part or
// its query (password=, sslpassword=). Anything the parser cannot read
// unambiguously is hidden whole.
func RedactPostgresURL(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil || u.Fragment != "" || (strings.Contains(raw, "@") && u.User == nil) ||
		(u.User != nil && strings.ContainsAny(u.Host+u.Path, "@#?")) {
		return redact(raw)
	}
	if q := u.Query(); q.Has("password") || q.Has("sslpassword") {
		for _, k := range []string{"password", "sslpassword"} {
			if q.Has(k) {
				q.Set(k, "xxxxx")
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// RedactURL hides credentials in a URL so it can be logged. A URL whose
// credentials the parser did not recognise as such (an unencoded '#', '/'
// or '?' in a password, no scheme) is hidden whole rather than risk
// printing part of a secret.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || (strings.Contains(raw, "@") && u.User == nil) {
		if strings.Contains(raw, "@") {
			return "[URL with credentials redacted]"
		}
		if err != nil {
			return "[unparseable URL]"
		}
	}
	if u.User != nil && (u.Fragment != "" || u.RawQuery != "" || strings.Contains(u.Host, "@")) {
		return "[URL with credentials redacted]"
	}
	return u.Redacted()
}
