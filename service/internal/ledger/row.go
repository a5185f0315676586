package ledger

import "time"

// Row is one request in the ledger. It holds names and numbers only: never
// a key, a prompt or an answer. The JSON form is the spill file's.
type Row struct {
	// ID is unique per row, made by the gateway: the primary key, so a
	// batch written twice (a commit whose answer was lost, a replay) is
	// stored once.
	ID string `json:"id"`
	// Time is when the request arrived.
	Time time.Time `json:"at"`
	// RequestID is the X-Request-Id the client got.
	RequestID string `json:"request_id"`
	// KeyName and Team are the client key's configured names (empty
	// without named keys).
	KeyName string `json:"key_name,omitempty"`
	Team    string `json:"team,omitempty"`
	// API, Model and Upstream are the gateway's metric labels: config
	// names, "unknown" for a model not served, "none" when no upstream
	// answered and "cache" for a cache hit.
	API      string `json:"api"`
	Model    string `json:"model"`
	Upstream string `json:"upstream"`
	Status   int    `json:"status"`
	Stream   bool   `json:"stream,omitempty"`
	// UsageKnown is false when the answer reported no usage (or usage
	// the request could not produce): its tokens and cost are zero.
	UsageKnown       bool  `json:"usage_known,omitempty"`
	PromptTokens     int64 `json:"prompt_tokens,omitempty"`
	CompletionTokens int64 `json:"completion_tokens,omitempty"`
	// CachedTokens are prompt tokens read from the upstream's prompt
	// cache, where its usage says so.
	CachedTokens    int64 `json:"cached_tokens,omitempty"`
	ReasoningTokens int64 `json:"reasoning_tokens,omitempty"`
	// CostUSD is what the answer cost at the answering upstream's price;
	// SavingsUSD is the reference price minus that (negative when the
	// route is dearer; a cache hit saves what the answer would cost).
	CostUSD    float64 `json:"cost_usd,omitempty"`
	SavingsUSD float64 `json:"savings_usd,omitempty"`
	CacheHit   bool    `json:"cache_hit,omitempty"`
	// Latency is arrival to the answer's last byte; TTFT is to a stream's
	// first event (0: not streamed, or no event sent).
	Latency  time.Duration `json:"latency_ns"`
	TTFT     time.Duration `json:"ttft_ns,omitempty"`
	Attempts int           `json:"attempts,omitempty"`
	// FallbackPath names the upstreams asked, in order, the one that
	// answered last.
	FallbackPath []string `json:"fallback_path,omitempty"`
}
