package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/relaygate/relaygate/service/internal/ledger"
)

// LedgerReader finds a request's ledger row. The ledger (package ledger)
// is one; a gateway whose LedgerWriter is not answers ledger_disabled.
type LedgerReader interface {
	LookupFor(ctx context.Context, requestID, keyName string) (ledger.Row, bool, error)
}

// generationPath answers what a request cost, from the ledger:
// GET /v1/generation?id=<X-Request-Id>, with the key that made it. The
// shape follows the per-request cost lookups clients of other gateways
// know (OpenRouter's /generation), in the ledger's own fields.
const generationPath = "/v1/generation"

// generationLookupTimeout bounds the ledger query: the answer is a
// convenience, never worth holding a client.
const generationLookupTimeout = 3 * time.Second

// generation is the answer: the ledger row, without what only the operator
// should see (the row's own id, the key's team when the key has none).
type generation struct {
	ID               string   `json:"id"`
	Object           string   `json:"object"`
	Created          int64    `json:"created"`
	API              string   `json:"api"`
	Model            string   `json:"model"`
	Upstream         string   `json:"upstream"`
	Status           int      `json:"status"`
	Stream           bool     `json:"stream"`
	UsageKnown       bool     `json:"usage_known"`
	PromptTokens     int64    `json:"prompt_tokens"`
	CompletionTokens int64    `json:"completion_tokens"`
	CachedTokens     int64    `json:"cached_tokens"`
	ReasoningTokens  int64    `json:"reasoning_tokens"`
	CostUSD          float64  `json:"cost_usd"`
	SavingsUSD       float64  `json:"savings_usd"`
	CacheHit         bool     `json:"cache_hit"`
	LatencyMS        float64  `json:"latency_ms"`
	TTFTMS           float64  `json:"ttft_ms,omitempty"`
	Attempts         int      `json:"attempts"`
	FallbackPath     []string `json:"fallback_path"`
	Key              string   `json:"key,omitempty"`
	Team             string   `json:"team,omitempty"`
}

// serveGeneration is GET /v1/generation. A key reads only its own
// requests: a named key those made under its name, a key of the plain
// client_keys list those of every such key (they are one client to the
// gateway). Another key's request is not found, as an unknown id is.
func (s *Server) serveGeneration(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Request-Id", requestID(r))
	st := s.state.Load()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, r, "GET")
		return
	}
	_, pol, e := st.authorize(r, epChat)
	if e != nil {
		writeError(w, e)
		return
	}
	lr, ok := s.ledger.(LedgerReader)
	if !ok || lr == nil {
		writeError(w, &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Code: "ledger_disabled",
			Message: "This gateway keeps no usage ledger (ledger.postgres_url is unset), so it cannot look up a request's cost."})
		return
	}
	id := r.URL.Query().Get("id")
	if id == "" || len(id) > 128 || !safeToken(id) {
		writeError(w, errBadRequestParam("invalid_id", "Give the request's X-Request-Id as ?id=… (at most 128 of letters, digits and - _ . : / + =).", "id"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), generationLookupTimeout)
	defer cancel()
	name := ""
	if pol != nil {
		name = pol.name
	}
	row, found, err := lr.LookupFor(ctx, id, name)
	if err != nil {
		s.log.Warn("ledger lookup failed", "request_id", requestID(r), "looked_up_id", id, "error", err.Error())
		w.Header().Set("Retry-After", "1")
		writeError(w, &apiError{Status: http.StatusServiceUnavailable, Type: typeServer, Code: "ledger_unavailable",
			Message: "The usage ledger cannot be read now; retry shortly."})
		return
	}
	if !found {
		writeError(w, &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Code: "generation_not_found",
			Message: "No request " + truncate(id, 100) + " of this key is in the ledger (yet: rows are written in batches, within a second or so)."})
		return
	}
	g := generation{
		ID: row.RequestID, Object: "generation", Created: row.Time.Unix(), API: row.API, Model: row.Model,
		Upstream: row.Upstream, Status: row.Status, Stream: row.Stream, UsageKnown: row.UsageKnown,
		PromptTokens: row.PromptTokens, CompletionTokens: row.CompletionTokens, CachedTokens: row.CachedTokens,
		ReasoningTokens: row.ReasoningTokens, CostUSD: row.CostUSD, SavingsUSD: row.SavingsUSD, CacheHit: row.CacheHit,
		LatencyMS: float64(row.Latency) / 1e6, TTFTMS: float64(row.TTFT) / 1e6, Attempts: row.Attempts,
		FallbackPath: row.FallbackPath, Key: row.KeyName, Team: row.Team,
	}
	if g.FallbackPath == nil {
		g.FallbackPath = []string{}
	}
	b, err := json.Marshal(g)
	if err != nil {
		writeError(w, &apiError{Status: http.StatusInternalServerError, Type: typeServer, Code: "internal_error", Message: "The ledger row could not be encoded."})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}
