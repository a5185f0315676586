package config

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

// errorSays fails t unless err is an error whose text holds each of want.
func errorSays(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("want an error")
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
}

const minimal = `
upstreams:
  - name: relay
    base_url: https://relay.example/v1
    api_key: ${RELAY_KEY}
models:
  - name: gpt-4.1
    route: [relay]
    price: {input_per_mtok: 2, output_per_mtok: 8}
`

func TestParseAppliesDefaultsAndExpandsEnv(t *testing.T) {
	cfg, err := Parse([]byte(minimal), env(map[string]string{"RELAY_KEY": "sk-relay: with # yaml chars"}))
	if err != nil {
		t.Fatal(err)
	}
	u := cfg.Upstreams[0]
	if u.APIKey != "sk-relay: with # yaml chars" {
		t.Errorf("api_key = %q: a secret with YAML syntax must arrive as it is", u.APIKey)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen", cfg.Listen, DefaultListen},
		{"max_body_bytes", cfg.MaxBodyBytes, int64(DefaultMaxBodyBytes)},
		{"timeout", u.Timeout.D(), DefaultTimeout},
		{"connect_timeout", u.ConnectTimeout.D(), DefaultConnectTimeout},
		{"retry.attempts", cfg.Retry.Attempts, DefaultAttempts},
		{"retry.backoff_min", cfg.Retry.BackoffMin.D(), DefaultBackoffMin},
		{"circuit_breaker.failures", cfg.CircuitBreaker.Failures, DefaultBreakerFailures},
		{"stream_idle_timeout", cfg.StreamIdleTimeout.D(), DefaultStreamIdleTimeout},
		{"read_header_timeout", cfg.ReadHeaderTimeout.D(), DefaultReadHeaderTimeout},
		{"idle_timeout", cfg.IdleTimeout.D(), DefaultIdleTimeout},
		{"shutdown_idle_timeout", cfg.ShutdownIdleTimeout.D(), DefaultShutdownIdleTimeout},
		{"max_connections", cfg.MaxConnections, 0},
		{"max_connections_per_ip", cfg.MaxConnectionsPerIP, 0},
		{"log.requests", *cfg.Log.Requests, true},
		{"cache.scope", cfg.Cache.Scope, CacheScopeKey},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if u.Disabled != "" || len(cfg.Warnings) != 0 {
		t.Errorf("unexpected disabled/warnings: %q %q", u.Disabled, cfg.Warnings)
	}
}

// TestDefaultsFitWhatTheFileSays: a default never contradicts a value
// the file sets, so the loader never refuses a key the user did not write.
func TestDefaultsFitWhatTheFileSays(t *testing.T) {
	doc := strings.Replace(minimal, "    api_key:", "    timeout: 5s\n    api_key:", 1) + "retry: {backoff_min: 15s}\n"
	cfg, err := Parse([]byte(doc), env(map[string]string{"RELAY_KEY": "k"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Upstreams[0].ConnectTimeout.D(); got != 5*time.Second {
		t.Errorf("connect_timeout = %s, want the 5s timeout", got)
	}
	if got := cfg.Retry.BackoffMax.D(); got != 15*time.Second {
		t.Errorf("backoff_max = %s, want backoff_min's 15s", got)
	}
}

// TestEnvTypedByValue: ${VAR} sets numbers and booleans as well as strings,
// written plain or quoted (a flow mapping needs the quotes), while a string
// field takes its text as it is, however number-like.
func TestEnvTypedByValue(t *testing.T) {
	doc := minimal + `client_keys: ["${GW_KEY}"]
max_body_bytes: ${MAX_BODY}
rate_limit: {rpm: "${RPM}", tpm: "${TPM}"}
cache: {redis_url: "redis://127.0.0.1:6379/0"}
log:
  requests: ${LOG_REQUESTS}
`
	cfg, err := Parse([]byte(doc), env(map[string]string{"RELAY_KEY": "0x1234", "GW_KEY": "1234567890123456789",
		"MAX_BODY": "2097152", "RPM": "60", "TPM": "100000", "LOG_REQUESTS": "false"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxBodyBytes != 2097152 || cfg.RateLimit.RPM != 60 || cfg.RateLimit.TPM != 100000 || *cfg.Log.Requests {
		t.Errorf("max_body_bytes %d, rpm %d, tpm %d, log.requests %v", cfg.MaxBodyBytes, cfg.RateLimit.RPM, cfg.RateLimit.TPM, *cfg.Log.Requests)
	}
	if cfg.ClientKeys[0] != "1234567890123456789" || cfg.Upstreams[0].APIKey != "0x1234" {
		t.Errorf("keys %q, %q: number-like keys must arrive as written", cfg.ClientKeys[0], cfg.Upstreams[0].APIKey)
	}
}

// TestEnvValueNotQuotedInErrors: yaml quotes the start of a value it cannot
// decode; one that came from the environment may be a secret.
func TestEnvValueNotQuotedInErrors(t *testing.T) {
	const key = "Zq9xT4mSecretKeyValue0123456789"
	_, err := Parse([]byte(minimal+"client_keys: ${GW_KEY}\n"), env(map[string]string{"RELAY_KEY": "k", "GW_KEY": key}))
	if err == nil {
		t.Fatal("a string where a list belongs was accepted")
	}
	if strings.Contains(err.Error(), key[:5]) || !strings.Contains(err.Error(), "client_keys") {
		t.Errorf("error %q: want the key named and no part of its value", err)
	}
	// The same for a value the gateway's own decoders quote.
	doc := strings.Replace(minimal, "    api_key:", "    timeout: ${UPSTREAM_TIMEOUT}\n    api_key:", 1)
	_, err = Parse([]byte(doc), env(map[string]string{"RELAY_KEY": "k", "UPSTREAM_TIMEOUT": key}))
	if err == nil || strings.Contains(err.Error(), key[:5]) || !strings.Contains(err.Error(), "upstreams[0].timeout") {
		t.Errorf("error %v: want the key named and no part of its value", err)
	}
}

func TestUnsetUpstreamKeyDisablesTheUpstream(t *testing.T) {
	cfg, err := Parse([]byte(minimal), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cfg.Upstreams[0].Disabled, "RELAY_KEY is not set") || len(cfg.Warnings) != 1 {
		t.Errorf("disabled = %q warnings = %q", cfg.Upstreams[0].Disabled, cfg.Warnings)
	}
}

func TestRouteEntryForms(t *testing.T) {
	doc := `
upstreams:
  - {name: relay, base_url: "http://127.0.0.1:1/v1"}
  - {name: official, base_url: "https://api.example/v1"}
models:
  - name: claude
    route:
      - relay
      - {upstream: official, model: claude-x-1, price: {input_per_mtok: 3, output_per_mtok: 15}}
    price: {input_per_mtok: 1, output_per_mtok: 5}
`
	cfg, err := Parse([]byte(doc), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.Models[0]
	if m.Route[0].Upstream != "relay" || m.Route[1].Upstream != "official" || m.Route[1].Model != "claude-x-1" {
		t.Fatalf("route = %+v", m.Route)
	}
	if p := m.PriceFor(m.Route[0]); p.OutputPerMTok != 5 {
		t.Errorf("relay price = %+v, want the model's", p)
	}
	if p := m.PriceFor(m.Route[1]); p.OutputPerMTok != 15 {
		t.Errorf("official price = %+v, want the entry's own", p)
	}
}

// TestBrokenConfigs checks that each mistake fails with its line and key.
func TestBrokenConfigs(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		env  map[string]string
		want []string
	}{
		{"unknown top-level key", minimal + "retyr: {attempts: 3}\n", nil, []string{"line 10", `unknown key "retyr"`, "known keys"}},
		{"unknown nested key", strings.Replace(minimal, "    api_key:", "    timout: 5s\n    api_key:", 1), nil, []string{"line 5", "upstreams[0]", `unknown key "timout"`}},
		{"duration without unit", strings.Replace(minimal, "    api_key:", "    timeout: 30\n    api_key:", 1), nil, []string{"line 5", "not a duration"}},
		{"wrong type", minimal + "retry: {attempts: many}\n", nil, []string{"line 10", "attempts"}},
		// Several keys on one line: the one named is the one whose value
		// the message quotes, not the line's last.
		{"wrong type in a flow mapping", minimal + "rate_limit: {rpm: many, tpm: 5}\n", nil, []string{"line 10: rate_limit.rpm: cannot unmarshal"}},
		{"bad duration in a flow mapping", minimal + "retry: {attempts: 3, backoff_min: 200, backoff_max: 10s}\n", nil, []string{"line 10: retry.backoff_min: \"200\" is not a duration"}},
		{"route to an unknown upstream", strings.Replace(minimal, "route: [relay]", "route: [relay, openai]", 1), nil, []string{"line 8", "models[0].route[1]", `"openai" is not defined`}},
		{"missing base_url", strings.Replace(minimal, "    base_url: https://relay.example/v1\n", "", 1), nil, []string{"upstreams[0].base_url", "is required"}},
		{"base_url not http", strings.Replace(minimal, "https://relay.example/v1", "ftp://relay.example", 1), nil, []string{"line 4", "not an absolute http(s) URL"}},
		{"credentials in base_url", strings.Replace(minimal, "https://relay.example/v1", "https://user:pw@relay.example/v1", 1), nil, []string{"must not carry credentials"}},
		{"client key variable unset", minimal + "client_keys: [\"${GATEWAY_API_KEY}\"]\n", nil, []string{"line 10", "client_keys[0]", "GATEWAY_API_KEY is not set"}},
		{"client key too short", minimal + "client_keys: [\"abc\"]\n", nil, []string{"client_keys[0]", "at least 16"}},
		{"no models", "upstreams:\n  - {name: r, base_url: \"http://127.0.0.1/v1\"}\n", nil, []string{"models: at least one model"}},
		{"duplicate model", minimal + "  - name: gpt-4.1\n    route: [relay]\n", nil, []string{"models[1].name", "defined twice"}},
		{"negative price", strings.Replace(minimal, "input_per_mtok: 2", "input_per_mtok: -2", 1), nil, []string{"models[0].price", "negative"}},
		{"backoff_max below min", minimal + "retry: {backoff_min: 2s, backoff_max: 1s}\n", nil, []string{"retry.backoff_max", "shorter"}},
		{"rate limit without redis", minimal + "rate_limit: {rpm: 10}\n", nil, []string{"rate_limit", "cache.redis_url"}},
		{"bad redis url", minimal + "cache: {redis_url: \"http://x\"}\n", nil, []string{"cache.redis_url"}},
		{"unknown cache scope", minimal + "cache: {redis_url: \"redis://127.0.0.1:6379/0\", scope: everyone}\n", nil, []string{"line 10: cache.scope", `"everyone"`, "use key"}},
		{"bad listen", minimal + "listen: \"8000\"\n", nil, []string{"listen", "host:port"}},
		{"not yaml", "upstreams: [\n", nil, []string{"not valid YAML"}},
		{"empty file", "", nil, []string{"empty"}},
		{"log level", minimal + "log: {level: loud}\n", nil, []string{"log.level"}},
		{"max_connections below -1", minimal + "max_connections: -2\n", nil, []string{"line 10: max_connections", "-1 (no limit)"}},
		{"negative max_connections_per_ip", minimal + "max_connections_per_ip: -1\n", nil, []string{"line 10: max_connections_per_ip", "negative"}},
		{"negative idle_timeout", minimal + "idle_timeout: -1s\n", nil, []string{"line 10", "negative"}},
		{"unknown API", strings.Replace(minimal, "    api_key:", "    apis: [chat, chats]\n    api_key:", 1), nil, []string{"line 5: upstreams[0].apis[1]", `unknown API "chats"`, "known APIs: chat, embeddings"}},
		{"API listed twice", strings.Replace(minimal, "    api_key:", "    apis: [chat, chat]\n    api_key:", 1), nil, []string{"line 5: upstreams[0].apis[1]", "listed twice"}},
		{"CORS origin with a path", minimal + "cors: {allowed_origins: [\"https://app.example.com/\"]}\n", nil, []string{"line 10: cors.allowed_origins[0]", "not an origin"}},
		{"CORS origin without a scheme", minimal + "cors: {allowed_origins: [app.example.com]}\n", nil, []string{"cors.allowed_origins[0]", "scheme://host"}},
		{"CORS header that is no header", minimal + "cors: {allowed_origins: [\"*\"], allowed_headers: [\"x y\"]}\n", nil, []string{"cors.allowed_headers[0]", "not a header name"}},
		{"CORS settings without origins", minimal + "cors: {max_age: 1m}\n", nil, []string{"cors.allowed_origins", "CORS is off"}},
		{"CORS max_age over a day", minimal + "cors: {allowed_origins: [\"*\"], max_age: 48h}\n", nil, []string{"cors.max_age", "over 24h"}},
		{"no API", strings.Replace(minimal, "    api_key:", "    apis: []\n    api_key:", 1), nil, []string{"line 5: upstreams[0].apis", "names no API"}},
		{"unknown upstream auth", strings.Replace(minimal, "    api_key:", "    auth: basic\n    api_key:", 1), nil, []string{"line 5: upstreams[0].auth", `"basic"`, "x-api-key"}},
		{"negative cache price", strings.Replace(minimal, "input_per_mtok: 2", "input_per_mtok: 2, cache_read_per_mtok: -1", 1), nil, []string{"models[0].price", "negative"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc), env(tt.env))
			errorSays(t, err, tt.want...)
		})
	}
}

// TestCacheScopes: each scope the docs name loads as written.
func TestCacheScopes(t *testing.T) {
	for _, scope := range []string{CacheScopeKey, CacheScopeTeam, CacheScopeGlobal} {
		cfg, err := Parse([]byte(minimal+"cache: {redis_url: \"redis://127.0.0.1:6379/0\", scope: "+scope+"}\n"), env(map[string]string{"RELAY_KEY": "k"}))
		if err != nil {
			t.Fatalf("scope %s: %v", scope, err)
		}
		if cfg.Cache.Scope != scope {
			t.Errorf("scope %s loaded as %q", scope, cfg.Cache.Scope)
		}
	}
}

func TestRedactedHidesSecrets(t *testing.T) {
	doc := minimal + "client_keys: [\"client-secret-0123456789\"]\ncache: {redis_url: \"redis://:hunter2@127.0.0.1:6379/0\"}\n"
	cfg, err := Parse([]byte(doc), env(map[string]string{"RELAY_KEY": "sk-relay-secret"}))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Redacted()
	for _, s := range []string{r.ClientKeys[0], r.Upstreams[0].APIKey, r.Cache.RedisURL} {
		if strings.Contains(s, "secret") || strings.Contains(s, "hunter2") {
			t.Errorf("redacted value still holds a secret: %q", s)
		}
	}
	if cfg.Upstreams[0].APIKey != "sk-relay-secret" {
		t.Error("Redacted changed the original")
	}
}

// TestShippedConfigs loads every config the repository ships.
func TestShippedConfigs(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	files, _ := filepath.Glob(filepath.Join(root, "config", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no config/*.yaml found")
	}
	vars := map[string]string{"GATEWAY_API_KEY": "gw-key-0123456789abcdef", "HOLYSHEEP_API_KEY": "k", "OPENAI_API_KEY": "k",
		"UPSTREAM_SIM_URL": "http://127.0.0.1:9001/v1", "GATEWAY_PORT": "8000",
		"RELAY_SIM_URL": "http://127.0.0.1:9101/v1", "OFFICIAL_SIM_URL": "http://127.0.0.1:9102/v1", "REDIS_URL": "redis://127.0.0.1:6379/0",
		"LEDGER_POSTGRES_URL": "postgres://postgres@127.0.0.1:5433/postgres?sslmode=disable", "LEDGER_SPILL_DIR": ".demo/ledger-spill"}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := Parse(data, env(vars))
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
			continue
		}
		if filepath.Base(f) == "gateway.yaml" {
			for _, m := range []string{"gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2"} {
				found := false
				for _, cm := range cfg.Models {
					if cm.Name == m && cm.Route[0].Upstream == "holysheep" && len(cm.Route) >= 2 && cm.Route[1].Upstream != "" {
						found = true
					}
				}
				if !found {
					t.Errorf("gateway.yaml: model %s must route holysheep first with an official fallback", m)
				}
			}
			for _, m := range cfg.Models {
				for _, e := range m.Route {
					for _, name := range e.Upstreams() {
						if u, _ := cfg.Upstream(name); !u.Speaks(APIChat) {
							t.Errorf("gateway.yaml: model %s routes chat to %s, which does not speak it (apis: %v)", m.Name, u.Name, u.APIs)
						}
					}
				}
			}
			for _, u := range cfg.Upstreams {
				if strings.Contains(u.BaseURL, "127.0.0.1") {
					t.Errorf("gateway.yaml: production config points %s at a local simulator", u.Name)
				}
			}
		}
	}
}

// TestUpstreamAPIs: an upstream speaks what its apis: says, or, without
// one, its vendor's default by the base URL's host.
func TestUpstreamAPIs(t *testing.T) {
	all := []string{APIChat, APIEmbeddings, APIResponses, APICompletions, APIModerations, APIImages, APIAudio}
	tests := []struct {
		name, baseURL, apis string
		want                []string
	}{
		{"OpenAI: every OpenAI API", "https://api.openai.com/v1", "", all},
		{"OpenAI host in another case, with a port", "https://API.OpenAI.com:443/v1", "", all},
		{"Anthropic: messages", "https://api.anthropic.com/v1", "", []string{APIMessages}},
		{"anything else: chat, embeddings, completions", "http://127.0.0.1:9001/v1", "", []string{APIChat, APIEmbeddings, APICompletions}},
		{"a relay on a subdomain of a vendor is not the vendor", "https://api.openai.com.relay.example/v1", "", []string{APIChat, APIEmbeddings, APICompletions}},
		{"declared wins over the default", "https://api.anthropic.com/v1", "apis: [chat, messages]", []string{APIChat, APIMessages}},
		{"declared, every name", "https://relay.example/v1", "apis: [chat, embeddings, responses, messages, completions, moderations, images, audio]", KnownAPIs},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := "upstreams:\n  - name: u\n    base_url: " + tt.baseURL + "\n"
			if tt.apis != "" {
				doc += "    " + tt.apis + "\n"
			}
			doc += "models:\n  - {name: m, route: [u]}\n"
			cfg, err := Parse([]byte(doc), env(nil))
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Upstreams[0].APIs; !slices.Equal(got, tt.want) {
				t.Errorf("apis = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestUpstreamAuthAndCachePrices: Anthropic's own API gets x-api-key
// unless told otherwise, and unset cache prices cost what input does.
func TestUpstreamAuthAndCachePrices(t *testing.T) {
	tests := []struct {
		name, base, auth, want string
	}{
		{"relay defaults to bearer", "https://relay.example/v1", "", AuthBearer},
		{"anthropic defaults to x-api-key", "https://api.anthropic.com/v1", "", AuthXAPIKey},
		{"anthropic host in any case", "https://API.Anthropic.com/v1", "", AuthXAPIKey},
		{"explicit x-api-key elsewhere", "http://127.0.0.1:9/v1", "x-api-key", AuthXAPIKey},
		{"explicit bearer for anthropic", "https://api.anthropic.com/v1", "bearer", AuthBearer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := strings.Replace(minimal, "https://relay.example/v1", tt.base, 1)
			if tt.auth != "" {
				doc = strings.Replace(doc, "    api_key:", "    auth: "+tt.auth+"\n    api_key:", 1)
			}
			cfg, err := Parse([]byte(doc), env(map[string]string{"RELAY_KEY": "k"}))
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Upstreams[0].Auth; got != tt.want {
				t.Errorf("auth = %q, want %q", got, tt.want)
			}
		})
	}

	doc := strings.Replace(minimal, "output_per_mtok: 8}", "output_per_mtok: 8, cache_write_per_mtok: 2.5, cache_read_per_mtok: 0.2}", 1)
	cfg, err := Parse([]byte(doc), env(map[string]string{"RELAY_KEY": "k"}))
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Models[0].Price; p.CacheWrite() != 2.5 || p.CacheRead() != 0.2 {
		t.Errorf("cache prices = %v, %v; want 2.5, 0.2", p.CacheWrite(), p.CacheRead())
	}
	cfg, err = Parse([]byte(minimal), env(map[string]string{"RELAY_KEY": "k"}))
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Models[0].Price; p.CacheWrite() != 2 || p.CacheRead() != 2 {
		t.Errorf("unset cache prices = %v, %v; want the input price 2", p.CacheWrite(), p.CacheRead())
	}
}

// TestResponsesSettings: the retention of response ids defaults to
// OpenAI's 30 days, and a cached-input price is read and checked.
func TestResponsesSettings(t *testing.T) {
	cfg, err := Parse([]byte(minimal), env(map[string]string{"RELAY_KEY": "k"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Upstreams[0].ResponseRetention.D(); got != 30*24*time.Hour {
		t.Errorf("response_retention default = %s", got)
	}
	if cfg.Models[0].Price.CacheReadPerMTok != nil {
		t.Error("a price without cache_read_per_mtok has one")
	}
	doc := strings.Replace(minimal, "output_per_mtok: 8}", "output_per_mtok: 8, cache_read_per_mtok: 0.5}", 1)
	doc = strings.Replace(doc, "api_key: ${RELAY_KEY}", "api_key: ${RELAY_KEY}\n    response_retention: 72h", 1)
	cfg, err = Parse([]byte(doc), env(map[string]string{"RELAY_KEY": "k"}))
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Models[0].Price.CacheReadPerMTok; p == nil || *p != 0.5 || cfg.Upstreams[0].ResponseRetention.D() != 72*time.Hour {
		t.Errorf("cache_read_per_mtok %v, response_retention %s", p, cfg.Upstreams[0].ResponseRetention)
	}
	for _, bad := range []string{
		strings.Replace(minimal, "output_per_mtok: 8}", "output_per_mtok: 8, cache_read_per_mtok: -1}", 1),
		strings.Replace(minimal, "api_key: ${RELAY_KEY}", "api_key: ${RELAY_KEY}\n    response_retention: -1h", 1),
	} {
		if _, err := Parse([]byte(bad), env(map[string]string{"RELAY_KEY": "k"})); err == nil {
			t.Errorf("accepted:\n%s", bad)
		}
	}
}
