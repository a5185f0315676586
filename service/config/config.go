// Package config loads and validates the gateway's YAML configuration.
//
// Loading is strict: an unknown key, a value of the wrong type or a broken
// reference fails start-up with the line and key at fault, so a typo never
// silently turns into a default. `${VAR}` in any string value expands from the
// environment after parsing, so secrets live in the environment and a secret
// containing YAML syntax cannot change the document's structure.
package config

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Config is the whole gateway configuration, in the shape of SPEC.md.
type Config struct {
	Listen            string   `yaml:"listen"`
	ClientKeys        []string `yaml:"client_keys,omitempty"`
	MaxBodyBytes      int64    `yaml:"max_body_bytes,omitempty"`
	StreamIdleTimeout Duration `yaml:"stream_idle_timeout,omitempty"`
	ShutdownTimeout   Duration `yaml:"shutdown_timeout,omitempty"`
	// ShutdownDelay is how long a draining gateway keeps serving (/ready
	// failing, every answer saying Connection: close) before it closes its
	// listener, so load balancers stop sending first.
	ShutdownDelay Duration `yaml:"shutdown_delay,omitempty"`
	// BodyReadTimeout bounds reading one request body, so a client that
	// announces a body and trickles it cannot hold a handler for long.
	BodyReadTimeout Duration `yaml:"body_read_timeout,omitempty"`
	// ReadHeaderTimeout bounds receiving a request's line and headers, so a
	// client that connects and sends them slowly is cut off.
	ReadHeaderTimeout Duration `yaml:"read_header_timeout,omitempty"`
	// IdleTimeout is how long a keep-alive connection may wait for its
	// next request. Behind a load balancer it must exceed the balancer's
	// own idle timeout (AWS ALB: 60s), or the balancer may send on a
	// connection the gateway is closing.
	IdleTimeout Duration `yaml:"idle_timeout,omitempty"`
	// MaxConnections bounds the client connections open at once on the
	// listener (and, separately, on admin.listen); one beyond it is closed
	// as it arrives. 0: half the process's open-file limit, leaving the
	// other half for upstream and Redis connections; -1: no limit.
	MaxConnections int `yaml:"max_connections,omitempty"`
	// MaxConnectionsPerIP bounds the connections one client address may
	// hold; 0 (the default) is no limit, since behind a load balancer every
	// client arrives from the balancer's few addresses.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip,omitempty"`
	// ShutdownIdleTimeout: a draining gateway closes a keep-alive
	// connection once it has been idle this long, rather than at once,
	// where it would race with a client sending its next request on it.
	ShutdownIdleTimeout Duration       `yaml:"shutdown_idle_timeout,omitempty"`
	Upstreams           []Upstream     `yaml:"upstreams,omitempty"`
	Models              []Model        `yaml:"models,omitempty"`
	Retry               Retry          `yaml:"retry,omitempty"`
	CircuitBreaker      CircuitBreaker `yaml:"circuit_breaker,omitempty"`
	Cache               Cache          `yaml:"cache,omitempty"`
	RateLimit           RateLimit      `yaml:"rate_limit,omitempty"`
	GPU                 GPU            `yaml:"gpu,omitempty"`
	SLO                 SLO            `yaml:"slo,omitempty"`
	Log                 Log            `yaml:"log,omitempty"`
	Admin               Admin          `yaml:"admin,omitempty"`
	CORS                CORS           `yaml:"cors,omitempty"`

	// BufferBudgetBytes bounds the memory that all whole (non-streamed)
	// upstream answers being read and sent may take at once; an answer
	// that finds it taken waits a little, then gets a 503.
	BufferBudgetBytes int64 `yaml:"buffer_budget_bytes,omitempty"`

	// Ledger writes one row per request to Postgres (see Ledger).
	Ledger Ledger `yaml:"ledger,omitempty"`

	// Warnings are problems that do not stop the gateway but that an
	// operator must see, e.g. an upstream disabled because its key variable
	// is unset. The loader fills it; it is not read from YAML.
	Warnings []string `yaml:"-"`
}

// Upstream is one OpenAI-compatible API the gateway can forward to.
type Upstream struct {
	Name    string `yaml:"name"`
	BaseURL string `yaml:"base_url"`
	// APIKey is the gateway's own key for this upstream. Empty means the
	// upstream needs no key (a model server on the GPU host).
	APIKey string `yaml:"api_key,omitempty"`
	// Auth is how APIKey is sent: AuthBearer ("Authorization: Bearer"), or
	// AuthXAPIKey ("x-api-key", Anthropic's native API). The default is
	// x-api-key for api.anthropic.com and bearer elsewhere.
	Auth           string   `yaml:"auth,omitempty"`
	Timeout        Duration `yaml:"timeout,omitempty"`
	ConnectTimeout Duration `yaml:"connect_timeout,omitempty"`
	// MaxIdleConns bounds the keep-alive pool to this upstream.
	MaxIdleConns int `yaml:"max_idle_conns,omitempty"`
	// APIs are the client APIs this upstream speaks (APIChat …); a model's
	// route for an API uses only the upstreams that speak it. Absent in
	// the file, the loader sets DefaultAPIs(BaseURL).
	APIs []string `yaml:"apis,omitempty"`
	// ResponseRetention is how long the upstream keeps stored Responses
	// API responses (OpenAI: 30 days); the gateway remembers which
	// upstream created a response id for as long.
	ResponseRetention Duration `yaml:"response_retention,omitempty"`

	// Disabled says why the upstream is out of every route (empty: in
	// service). Set by the loader, not read from YAML.
	Disabled string `yaml:"-"`
}

// The APIs an upstream may speak, as `apis:` names them.
const (
	APIChat        = "chat"        // POST /v1/chat/completions
	APIEmbeddings  = "embeddings"  // POST /v1/embeddings
	APIResponses   = "responses"   // POST /v1/responses and its follow-ups
	APIMessages    = "messages"    // POST /v1/messages (Anthropic)
	APICompletions = "completions" // POST /v1/completions (legacy)
	APIModerations = "moderations" // POST /v1/moderations
	APIImages      = "images"      // POST /v1/images/generations
	APIAudio       = "audio"       // POST /v1/audio/speech and /transcriptions
)

// KnownAPIs lists every API name, in the order errors list them.
var KnownAPIs = []string{APIChat, APIEmbeddings, APIResponses, APIMessages, APICompletions, APIModerations, APIImages, APIAudio}

// DefaultAPIs is what an upstream without `apis:` speaks, by its base URL's
// host: OpenAI's own API speaks all of OpenAI's APIs; Anthropic's speaks
// Messages (its OpenAI-compatible chat layer must be asked for with
// `apis: [chat]`: Anthropic calls it not production-ready); anything else
// (relays, vLLM, SGLang, Ollama, other vendors' OpenAI-compatible
// endpoints) is taken to speak what every OpenAI-compatible server does:
// chat, embeddings and legacy completions. Anything more is declared.
func DefaultAPIs(baseURL string) []string {
	host := ""
	if u, err := url.Parse(baseURL); err == nil {
		host = strings.ToLower(u.Hostname())
	}
	switch host {
	case "api.openai.com":
		return []string{APIChat, APIEmbeddings, APIResponses, APICompletions, APIModerations, APIImages, APIAudio}
	case "api.anthropic.com":
		return []string{APIMessages}
	}
	return []string{APIChat, APIEmbeddings, APICompletions}
}

// Speaks reports whether the upstream speaks api.
func (u *Upstream) Speaks(api string) bool { return slices.Contains(u.APIs, api) }

// Model is a model name clients may ask for and the chain serving it.
type Model struct {
	Name           string       `yaml:"name"`
	Route          []RouteEntry `yaml:"route"`
	Price          Price        `yaml:"price"`
	ReferencePrice *Price       `yaml:"reference_price,omitempty"`
}

// RouteEntry is one link of a model's chain. In YAML it is either an
// upstream name, or a mapping that also renames the model for that upstream
// (official APIs often spell model ids differently from relays) and gives
// the price paid there.
type RouteEntry struct {
	Upstream string `yaml:"upstream,omitempty"`
	Model    string `yaml:"model,omitempty"`
	Price    *Price `yaml:"price,omitempty"`
}

// Price is in US dollars per million tokens. The cache prices are what
// prompt-cache writes and reads cost (Anthropic's cache_creation and
// cache_read input tokens); unset, they cost what input does, so that
// cache tokens are never counted free by omission.
type Price struct {
	InputPerMTok      float64  `yaml:"input_per_mtok"`
	OutputPerMTok     float64  `yaml:"output_per_mtok"`
	CacheWritePerMTok *float64 `yaml:"cache_write_per_mtok,omitempty"`
	CacheReadPerMTok  *float64 `yaml:"cache_read_per_mtok,omitempty"`
}

// CacheWrite is the price of a cache write: its own, else the input price.
func (p Price) CacheWrite() float64 {
	if p.CacheWritePerMTok != nil {
		return *p.CacheWritePerMTok
	}
	return p.InputPerMTok
}

// CacheRead is the price of a cache read: its own, else the input price.
func (p Price) CacheRead() float64 {
	if p.CacheReadPerMTok != nil {
		return *p.CacheReadPerMTok
	}
	return p.InputPerMTok
}

// Upstream auth schemes (upstreams[].auth).
const (
	AuthBearer  = "bearer"
	AuthXAPIKey = "x-api-key"
)

// Retry bounds the attempts on one upstream before falling back.
type Retry struct {
	Attempts   int      `yaml:"attempts,omitempty"`
	BackoffMin Duration `yaml:"backoff_min,omitempty"`
	BackoffMax Duration `yaml:"backoff_max,omitempty"`
}

// CircuitBreaker stops traffic to an upstream after consecutive failures
// and lets one probe through after the cool-down.
type CircuitBreaker struct {
	Failures int      `yaml:"failures,omitempty"`
	Cooldown Duration `yaml:"cooldown,omitempty"`
}

// Cache configures the Redis response cache; an empty RedisURL turns it off.
type Cache struct {
	RedisURL string   `yaml:"redis_url,omitempty"`
	TTL      Duration `yaml:"ttl,omitempty"`
	Timeout  Duration `yaml:"timeout,omitempty"`
	// Scope is who shares cached answers (CacheScopeKey, the default, and
	// the others): a cached answer, and its Age, never crosses it.
	Scope string `yaml:"scope,omitempty"`
}

// Cache scopes. A shared answer tells its reader what someone else asked
// and when (Age), so sharing across client keys is an explicit choice.
const (
	// CacheScopeKey: each client key has a cache of its own.
	CacheScopeKey = "key"
	// CacheScopeTeam: the keys of one team share. Until keys belong to
	// teams (keys: [{name, team, …}]), a key is a team of its own, so
	// team is key: it never shares more than the operator chose.
	CacheScopeTeam = "team"
	// CacheScopeGlobal: every client shares one cache.
	CacheScopeGlobal = "global"
)

// RateLimit is per client key; 0 turns a limit off.
type RateLimit struct {
	RPM int `yaml:"rpm,omitempty"`
	TPM int `yaml:"tpm,omitempty"`
}

// Ledger configures the usage ledger: one row per answered or refused
// request in Postgres, written off the request path in batches. An empty
// PostgresURL turns it off. Rows that cannot reach Postgres go to
// append-only files in SpillDir and are replayed once it is back.
type Ledger struct {
	// PostgresURL is a postgres:// URL; a secret (it may hold a password).
	PostgresURL string `yaml:"postgres_url,omitempty"`
	// SpillDir holds the spill files; it must be on a disk that survives a
	// restart and be used by one gateway process only.
	SpillDir string `yaml:"spill_dir,omitempty"`
	// BatchInterval is the longest a row waits in memory for its batch.
	BatchInterval Duration `yaml:"batch_interval,omitempty"`
	// BatchRows is the most rows one COPY writes.
	BatchRows int `yaml:"batch_rows,omitempty"`
	// QueueRows bounds the rows held in memory; beyond it a row goes to
	// the spill file at once.
	QueueRows int `yaml:"queue_rows,omitempty"`
	// FsyncInterval is how often spilled rows are fsynced: a crash loses
	// at most the rows spilled since the last fsync.
	FsyncInterval Duration `yaml:"fsync_interval,omitempty"`
	// WriteTimeout bounds one batch's write to Postgres; a batch not
	// committed by then goes to the spill file.
	WriteTimeout Duration `yaml:"write_timeout,omitempty"`
}

// Enabled reports whether the ledger is on.
func (l Ledger) Enabled() bool { return l.PostgresURL != "" }

// GPU configures NVML telemetry.
type GPU struct {
	ExpectedCount int      `yaml:"expected_count,omitempty"`
	Interval      Duration `yaml:"interval,omitempty"`
}

// SLO holds the objectives exported for alerting.
type SLO struct {
	LatencyP95 Duration `yaml:"latency_p95,omitempty"`
}

// Admin controls who can read /metrics and the detailed /health. By
// default both are on the main listener and open, like most exporters;
// Listen moves them to an address of their own (a private interface), Key
// requires a Bearer key for them. /ready and a status-only /health stay on
// the main listener for load balancers either way.
type Admin struct {
	Listen string `yaml:"listen,omitempty"`
	Key    string `yaml:"key,omitempty"`
}

// CORS lets browser code on other origins call the API (paths under
// /v1/). Off without allowed_origins: no CORS header is sent, and an
// OPTIONS request is a 405 as before.
type CORS struct {
	// AllowedOrigins are exact origins ("https://app.example.com") or "*"
	// for any.
	AllowedOrigins []string `yaml:"allowed_origins,omitempty"`
	// AllowedHeaders are request headers allowed beside the defaults
	// (DefaultCORSHeaders).
	AllowedHeaders []string `yaml:"allowed_headers,omitempty"`
	// MaxAge is how long a browser may cache a preflight's answer.
	MaxAge Duration `yaml:"max_age,omitempty"`
}

// DefaultCORSHeaders are the request headers a preflight always allows:
// what the OpenAI and Anthropic SDKs send from a browser.
var DefaultCORSHeaders = []string{
	"Authorization", "Content-Type", "x-api-key", "anthropic-version", "anthropic-beta",
	"anthropic-dangerous-direct-browser-access", "X-Request-Id", "X-Relaygate-Cache",
	"OpenAI-Organization", "OpenAI-Project", "OpenAI-Beta",
	"X-Stainless-Arch", "X-Stainless-Lang", "X-Stainless-OS", "X-Stainless-Package-Version",
	"X-Stainless-Retry-Count", "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Timeout",
}

// Enabled reports whether CORS is on.
func (c CORS) Enabled() bool { return len(c.AllowedOrigins) > 0 }

// Log configures structured logging.
type Log struct {
	Level    string `yaml:"level,omitempty"`
	Requests *bool  `yaml:"requests,omitempty"`
}

// Duration is a time.Duration written with a unit ("200ms", "1h"). A bare
// number is refused: YAML would read `timeout: 30` as 30 nanoseconds.
type Duration time.Duration

// D returns the duration as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// Defaults applied where the file is silent.
const (
	DefaultListen            = ":8000"
	DefaultMaxBodyBytes      = 10 << 20
	DefaultTimeout           = 180 * time.Second
	DefaultConnectTimeout    = 10 * time.Second
	DefaultStreamIdleTimeout = 60 * time.Second
	DefaultShutdownTimeout   = 30 * time.Second
	DefaultBodyReadTimeout   = 30 * time.Second
	// DefaultReadHeaderTimeout and DefaultIdleTimeout are what the
	// gateway's http.Server had before they were settings.
	DefaultReadHeaderTimeout   = 10 * time.Second
	DefaultIdleTimeout         = 120 * time.Second
	DefaultShutdownIdleTimeout = time.Second
	DefaultAttempts            = 3
	DefaultBackoffMin          = 200 * time.Millisecond
	DefaultBackoffMax          = 10 * time.Second
	DefaultBreakerFailures     = 5
	DefaultBreakerCooldown     = 30 * time.Second
	DefaultCacheTTL            = time.Hour
	DefaultCacheTimeout        = 50 * time.Millisecond
	DefaultGPUInterval         = 10 * time.Second
	DefaultCORSMaxAge          = 10 * time.Minute
	DefaultMaxIdleConns        = 256
	// DefaultResponseRetention is how long OpenAI keeps stored responses.
	DefaultResponseRetention = 30 * 24 * time.Hour
	// DefaultBufferBudgetBytes fits the largest embeddings answer (up to
	// 192 MiB) and a few chat answers beside it.
	DefaultBufferBudgetBytes = 256 << 20
	// MinBufferBudgetBytes: below it, ordinary answers would queue.
	MinBufferBudgetBytes = 1 << 20

	// The ledger's defaults (ledger:). The spill directory is where a
	// Debian package keeps service state; give the container a volume there.
	DefaultLedgerSpillDir      = "/var/lib/relaygate/ledger"
	DefaultLedgerBatchInterval = 200 * time.Millisecond
	DefaultLedgerBatchRows     = 500
	DefaultLedgerQueueRows     = 10000
	DefaultLedgerFsyncInterval = 200 * time.Millisecond
	DefaultLedgerWriteTimeout  = 5 * time.Second
)

func (c *Config) applyDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	setDur(&c.StreamIdleTimeout, DefaultStreamIdleTimeout)
	setDur(&c.ShutdownTimeout, DefaultShutdownTimeout)
	setDur(&c.BodyReadTimeout, DefaultBodyReadTimeout)
	setDur(&c.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	setDur(&c.IdleTimeout, DefaultIdleTimeout)
	setDur(&c.ShutdownIdleTimeout, DefaultShutdownIdleTimeout)
	if c.BufferBudgetBytes == 0 {
		c.BufferBudgetBytes = DefaultBufferBudgetBytes
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		setDur(&u.Timeout, DefaultTimeout)
		// A default never contradicts what the file says: with only
		// `timeout: 5s`, connecting may take those 5s, not a 10s default
		// the loader would then refuse as longer than the timeout.
		setDur(&u.ConnectTimeout, min(DefaultConnectTimeout, u.Timeout.D()))
		if u.MaxIdleConns == 0 {
			u.MaxIdleConns = DefaultMaxIdleConns
		}
		if u.Auth == "" {
			u.Auth = defaultAuth(u.BaseURL)
		}
		setDur(&u.ResponseRetention, DefaultResponseRetention)
	}
	if c.Retry.Attempts == 0 {
		c.Retry.Attempts = DefaultAttempts
	}
	setDur(&c.Retry.BackoffMin, DefaultBackoffMin)
	setDur(&c.Retry.BackoffMax, max(DefaultBackoffMax, c.Retry.BackoffMin.D()))
	if c.CircuitBreaker.Failures == 0 {
		c.CircuitBreaker.Failures = DefaultBreakerFailures
	}
	setDur(&c.CircuitBreaker.Cooldown, DefaultBreakerCooldown)
	setDur(&c.Cache.TTL, DefaultCacheTTL)
	setDur(&c.Cache.Timeout, DefaultCacheTimeout)
	if c.Cache.Scope == "" {
		c.Cache.Scope = CacheScopeKey
	}
	setDur(&c.GPU.Interval, DefaultGPUInterval)
	if c.CORS.Enabled() {
		setDur(&c.CORS.MaxAge, DefaultCORSMaxAge)
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	c.Ledger.applyDefaults()
	if c.Log.Requests == nil {
		on := true
		c.Log.Requests = &on
	}
}

// defaultAuth is how a base URL's vendor takes its key: Anthropic's own
// API wants x-api-key, everything OpenAI-compatible a Bearer token.
func defaultAuth(baseURL string) string {
	if u, err := url.Parse(baseURL); err == nil && strings.EqualFold(u.Hostname(), "api.anthropic.com") {
		return AuthXAPIKey
	}
	return AuthBearer
}

func (l *Ledger) applyDefaults() {
	if !l.Enabled() {
		return
	}
	if l.SpillDir == "" {
		l.SpillDir = DefaultLedgerSpillDir
	}
	setDur(&l.BatchInterval, DefaultLedgerBatchInterval)
	setDur(&l.FsyncInterval, DefaultLedgerFsyncInterval)
	setDur(&l.WriteTimeout, DefaultLedgerWriteTimeout)
	if l.BatchRows == 0 {
		l.BatchRows = DefaultLedgerBatchRows
	}
	if l.QueueRows == 0 {
		l.QueueRows = DefaultLedgerQueueRows
	}
}

func setDur(d *Duration, def time.Duration) {
	if *d == 0 {
		*d = Duration(def)
	}
}

// Upstream returns the upstream with the given name.
func (c *Config) Upstream(name string) (*Upstream, bool) {
	for i := range c.Upstreams {
		if c.Upstreams[i].Name == name {
			return &c.Upstreams[i], true
		}
	}
	return nil, false
}

// PriceFor is what one route entry charges: its own price, else the model's.
func (m *Model) PriceFor(e RouteEntry) Price {
	if e.Price != nil {
		return *e.Price
	}
	return m.Price
}

// Redacted returns a copy safe to print: every secret replaced.
func (c *Config) Redacted() Config {
	out := *c
	out.ClientKeys = make([]string, len(c.ClientKeys))
	for i := range c.ClientKeys {
		out.ClientKeys[i] = redact(c.ClientKeys[i])
	}
	out.Upstreams = append([]Upstream(nil), c.Upstreams...)
	for i := range out.Upstreams {
		out.Upstreams[i].APIKey = redact(out.Upstreams[i].APIKey)
	}
	out.Cache.RedisURL = RedactURL(c.Cache.RedisURL)
	out.Admin.Key = redact(c.Admin.Key)
	out.Ledger.PostgresURL = RedactPostgresURL(c.Ledger.PostgresURL)
	return out
}

func redact(s string) string {
	if s == "" {
		return ""
	}
	return fmt.Sprintf("[redacted %d chars]", len(s))
}
