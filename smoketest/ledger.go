package smoketest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/relaygate/relaygate/internal/ctxsleep"
)

// DefaultLedgerWait is how long the ledger check waits for its request's
// row: the gateway writes rows in batches off the request path (every
// 200 ms by default), so a row appears a moment after its answer.
const DefaultLedgerWait = 15 * time.Second

// ledgerPoll is how often the check asks; a variable so tests need not
// wait on a real gateway's pace.
var ledgerPoll = 500 * time.Millisecond

// The gateway's error codes on GET /v1/generation.
const (
	codeGenerationNotFound = "generation_not_found"
	codeLedgerDisabled     = "ledger_disabled"
)

// ledgerProbe is what the completion check saw of its own request, for the
// ledger check to find in the ledger.
type ledgerProbe struct {
	requestID              string
	model, upstream        string
	promptTokens, complTok int
}

// generation is a ledger row as GET /v1/generation answers it. The
// request's id is "id"; an answer in the ledger's own row shape has the row's
// id there and the request's in "request_id", so both are read.
type generation struct {
	ID               string   `json:"id"`
	RequestID        string   `json:"request_id"`
	Model            string   `json:"model"`
	Upstream         string   `json:"upstream"`
	Status           int      `json:"status"`
	PromptTokens     int      `json:"prompt_tokens"`
	CompletionTokens int      `json:"completion_tokens"`
	CostUSD          float64  `json:"cost_usd"`
	LatencyMS        *float64 `json:"latency_ms"`
}

// requestID is the request the row is for.
func (g generation) requestID() string {
	if g.RequestID != "" {
		return g.RequestID
	}
	return g.ID
}

// checkLedger: the completion check's request reached the ledger in
// Postgres, with the model and the token counts the answer reported.
func (r *runner) checkLedger(ctx context.Context, s *Step) {
	p := *r.ledgerProbe
	if p.requestID == "" {
		s.fail("the completion's answer had no X-Request-Id header, so its ledger row cannot be looked up",
			"the gateway sets X-Request-Id on every answer; a proxy in front of it may strip the header")
		return
	}
	path := "/v1/generation?id=" + url.QueryEscape(p.requestID)
	t0 := time.Now()
	for {
		code, body, err := r.get(ctx, path, true)
		if err != nil {
			s.fail(r.reachError(ctx, "the gateway", err))
			return
		}
		var e apiError
		_ = json.Unmarshal(body, &e)
		errCode, _ := e.Error.Code.(string)
		switch {
		case code == http.StatusOK:
			r.verifyGeneration(s, p, body, time.Since(t0))
			return
		case code == http.StatusNotFound && errCode == codeLedgerDisabled:
			if r.opts.Outputs.LedgerEnabled {
				s.fail("the stack deploys a ledger database (output ledgerEnabled) but the gateway answers "+codeLedgerDisabled,
					"the gateway runs without ledger.postgres_url: check the rendered config on the host (/etc/relaygate/gateway.yaml in the gateway container) "+
						"and that the gateway's environment has LEDGER_POSTGRES_URL; `pulumi up` renders both")
				return
			}
			s.Status, s.Detail = NotApplicable, "the gateway has no usage ledger ("+codeLedgerDisabled+"): the stack's ledger is off"
			return
		case code == http.StatusNotFound && errCode == codeGenerationNotFound:
			// Not written yet: rows go to Postgres in batches.
		case code == http.StatusUnauthorized:
			s.fail("GET /v1/generation answered HTTP 401: "+errorMessage(body), completionHint(code))
			return
		case code == http.StatusNotFound:
			s.fail("GET /v1/generation answered HTTP 404 without a ledger error code: "+errorMessage(body),
				"the gateway does not serve the ledger lookup: its image predates the ledger; deploy a current one")
			return
		default:
			s.fail(fmt.Sprintf("GET /v1/generation answered HTTP %d: %s", code, errorMessage(body)),
				"the gateway could not read the ledger: its log has the error (look up the X-Request-Id); check that Postgres runs and accepts the gateway")
			return
		}
		if time.Since(t0)+ledgerPoll > r.opts.LedgerWait {
			s.fail(fmt.Sprintf("request %s is not in the ledger %s after its answer (%s)", p.requestID, r.opts.LedgerWait, codeGenerationNotFound),
				"the gateway writes rows off the request path and spills them to /var/lib/relaygate/ledger when Postgres is unreachable, "+
					"replaying them once it is back: check that the ledger database runs (on a host, `docker logs relaygate-ledger-db`; "+
					"on prod, the RDS instance's status), that the gateway reaches it (the RDS security group admits the hosts), "+
					"and the gateway's log for ledger errors")
			return
		}
		if !ctxsleep.Sleep(ctx, ledgerPoll) {
			s.fail(r.reachError(ctx, "the gateway", ctx.Err()))
			return
		}
	}
}

// verifyGeneration compares the ledger's row with what the answer said.
func (r *runner) verifyGeneration(s *Step, p ledgerProbe, body []byte, after time.Duration) {
	var g generation
	if err := json.Unmarshal(body, &g); err != nil {
		s.fail(fmt.Sprintf("GET /v1/generation answered 200 but not the ledger's JSON (%v): %s", err, snippet(body)),
			"is gatewayUrl pointing at Relaygate?")
		return
	}
	var wrong []string
	if g.requestID() != p.requestID {
		wrong = append(wrong, fmt.Sprintf("id %q, not %q", g.requestID(), p.requestID))
	}
	if g.Model != p.model {
		wrong = append(wrong, fmt.Sprintf("model %q, not %q", g.Model, p.model))
	}
	if g.PromptTokens != p.promptTokens || g.CompletionTokens != p.complTok {
		wrong = append(wrong, fmt.Sprintf("%d+%d tokens, but the answer reported %d+%d", g.PromptTokens, g.CompletionTokens, p.promptTokens, p.complTok))
	}
	if len(wrong) > 0 {
		s.fail(fmt.Sprintf("the ledger's row for request %s has %s", p.requestID, strings.Join(wrong, "; ")),
			"the ledger records something else than what the client was answered: the gateway's log has the request; this is a bug in the gateway's ledger")
		return
	}
	latency := ""
	if g.LatencyMS != nil {
		latency = ", " + formatMS(*g.LatencyMS)
	}
	s.passf("request %s in the ledger after %s: %s via %s, status %d, %d+%d tokens, $%.6f%s",
		p.requestID, after.Round(10*time.Millisecond), g.Model, orNone(g.Upstream), g.Status, g.PromptTokens, g.CompletionTokens, g.CostUSD, latency)
}
