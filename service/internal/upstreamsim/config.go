package upstreamsim

import (
	"crypto/subtle"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Defaults applied to zero values of Config. They are small on purpose: the
// simulator is a fast, cheap stand-in, not a model.
const (
	DefaultCompletionTokens = 16
	DefaultTokensPerChunk   = 1
	DefaultEmbeddingDims    = 8
	DefaultFailureStatus    = http.StatusServiceUnavailable
)

// Config sets what the simulator answers and which faults it injects. The zero
// value is a fault-free, zero-latency, open (no key) simulator that accepts
// any model.
type Config struct {
	// Models, when set, is the list served by /v1/models and the only models
	// accepted; others get 404 model_not_found. Empty accepts any model.
	Models []string
	// APIKey, when set, must arrive as "Authorization: Bearer <key>";
	// otherwise the request gets 401 invalid_api_key.
	APIKey string
	// Seed seeds the per-request fault and jitter draws, so that a run with the
	// same seed and the same request order injects the same faults.
	Seed int64

	// Latency is waited before the first byte of every model answer, plus a
	// uniform draw in [0, Jitter]. ChunkDelay is waited between stream events.
	Latency, Jitter, ChunkDelay time.Duration

	// CompletionTokens is the answer length (default 16); a smaller max_tokens
	// or max_completion_tokens in the request wins. TokensPerChunk tokens go
	// in each streamed chunk (default 1). EmbeddingDims is the length of each
	// embedding vector (default 8).
	CompletionTokens, TokensPerChunk, EmbeddingDims int

	// FailureRate is the share of model requests answered with an error status
	// drawn uniformly from FailureStatuses (default 503). A 429 carries
	// Retry-After (whole seconds, rounded up) and retry-after-ms when
	// RetryAfter is set.
	FailureRate     float64
	FailureStatuses []int
	RetryAfter      time.Duration

	// HangRate is the share of model requests that are never answered until the
	// client goes away. ResetRate is the share whose TCP connection is reset
	// without a response. CutRate is the share of streams that are dropped
	// after CutAfterChunks events (0: right after the headers), without [DONE].
	HangRate, ResetRate, CutRate float64
	CutAfterChunks               int

	// ErrorAfterStartRate is the share of Messages streams that send
	// message_start and ping, then an overloaded_error event, and end: the
	// failure a gateway must still fall back on, since no content has
	// reached its client.
	ErrorAfterStartRate float64
	// ReasoningTokens is how many reasoning tokens each Responses answer
	// reports (within output_tokens, as OpenAI counts them), with a
	// reasoning output item. FailAfterCreatedRate is the share of
	// Responses streams that fail with response.failed right after
	// response.created and response.in_progress, the failure that
	// gateways which commit at the first byte cannot fall back from.
	ReasoningTokens      int
	FailAfterCreatedRate float64

	// VLLM makes the simulator act as a vLLM server (vllm.go): GET
	// /health (200 once loaded, 503 while loading), GET /metrics with
	// vLLM's metric names, and POST /sim/state?set=loading|ready|dead to
	// change its state at run time. LoadTime is how long it loads after
	// New (read once, at New). MaxRunning bounds the chat requests running
	// at once (vLLM's max_num_seqs); more wait, counted as
	// vllm:num_requests_waiting. 0: no bound.
	VLLM       bool
	LoadTime   time.Duration
	MaxRunning int
}

// settings is a Config with defaults applied and everything the hot path
// needs precomputed. It is immutable once built and swapped atomically.
type settings struct {
	Config
	models      map[string]struct{}
	key         []byte // compared in constant time
	modelsJSON  []byte // the whole /v1/models body
	retryAfter  []string
	retryAfterM []string
	// slots hold one token per running chat request when MaxRunning
	// bounds them (VLLM only).
	slots chan struct{}
}

func newSettings(cfg Config, created int64) *settings {
	s := &settings{Config: cfg}
	// Copy the slices so that a caller mutating its Config after New or
	// SetConfig cannot race with requests in flight.
	s.Models = append([]string(nil), cfg.Models...)
	s.FailureStatuses = nil
	for _, code := range cfg.FailureStatuses {
		if code >= 100 && code <= 999 {
			s.FailureStatuses = append(s.FailureStatuses, code)
		}
	}
	if len(s.FailureStatuses) == 0 {
		s.FailureStatuses = []int{DefaultFailureStatus}
	}
	s.CompletionTokens = positiveOr(s.CompletionTokens, DefaultCompletionTokens)
	s.TokensPerChunk = positiveOr(s.TokensPerChunk, DefaultTokensPerChunk)
	s.EmbeddingDims = positiveOr(s.EmbeddingDims, DefaultEmbeddingDims)
	s.Latency = max(s.Latency, 0)
	s.Jitter = max(s.Jitter, 0)
	s.ChunkDelay = max(s.ChunkDelay, 0)
	s.RetryAfter = max(s.RetryAfter, 0)
	s.CutAfterChunks = max(s.CutAfterChunks, 0)
	s.FailureRate = clampRate(s.FailureRate)
	s.HangRate = clampRate(s.HangRate)
	s.ResetRate = clampRate(s.ResetRate)
	s.CutRate = clampRate(s.CutRate)
	s.ErrorAfterStartRate = clampRate(s.ErrorAfterStartRate)
	s.FailAfterCreatedRate = clampRate(s.FailAfterCreatedRate)
	s.ReasoningTokens = max(s.ReasoningTokens, 0)

	if len(s.Models) > 0 {
		s.models = make(map[string]struct{}, len(s.Models))
		for _, m := range s.Models {
			s.models[m] = struct{}{}
		}
	}
	if s.APIKey != "" {
		s.key = []byte(s.APIKey)
	}
	if s.RetryAfter > 0 {
		secs := int64(math.Ceil(s.RetryAfter.Seconds()))
		s.retryAfter = []string{strconv.FormatInt(secs, 10)}
		s.retryAfterM = []string{strconv.FormatInt(s.RetryAfter.Milliseconds(), 10)}
	}
	s.modelsJSON = appendModelList(nil, s.Models, created)
	if s.VLLM && s.MaxRunning > 0 {
		s.slots = make(chan struct{}, s.MaxRunning)
	}
	return s
}

// positiveOr is v, or def where v is zero or negative (unset or nonsense).
func positiveOr(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// clampRate maps a rate into [0,1]; NaN counts as 0 so that a bad flag cannot
// turn every request into a fault.
func clampRate(r float64) float64 {
	switch {
	case r > 1:
		return 1
	case r > 0:
		return r
	default:
		return 0
	}
}

func (s *settings) knownModel(model string) bool {
	if s.models == nil {
		return true
	}
	_, ok := s.models[model]
	return ok
}

func (s *settings) authorized(r *http.Request) bool {
	if s.key == nil {
		return true
	}
	if k := r.Header["X-Api-Key"]; len(k) > 0 {
		// Anthropic's clients send their key here.
		return len(k) == 1 && subtle.ConstantTimeCompare([]byte(k[0]), s.key) == 1
	}
	got := r.Header["Authorization"]
	if len(got) != 1 {
		return false
	}
	scheme, key, ok := strings.Cut(got[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(key), s.key) == 1
}

func appendModelList(dst []byte, models []string, created int64) []byte {
	dst = append(dst, `{"object":"list","data":[`...)
	for i, m := range models {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"id":`...)
		dst = appendJSONString(dst, m)
		dst = append(dst, `,"object":"model","created":`...)
		dst = strconv.AppendInt(dst, created, 10)
		dst = append(dst, `,"owned_by":"upstream-sim"}`...)
	}
	return append(dst, "]}"...)
}
