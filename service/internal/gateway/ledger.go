package gateway

import (
	"encoding/hex"
	"math/rand/v2"
	"time"

	"github.com/relaygate/relaygate/service/internal/ledger"
	"github.com/relaygate/relaygate/service/internal/metrics"
)

// LedgerWriter takes the ledger row of each request. Write must not block
// on a database: it runs on the request's goroutine as the request ends.
type LedgerWriter interface{ Write(ledger.Row) }

// writeLedger records the request's row: every request that reached the
// proxy, answered or refused. Cost and savings are those the metrics
// count (finish), except that a route dearer than the reference shows a
// negative saving here, where the savings counter cannot go down.
func (x *exchange) writeLedger(d time.Duration) {
	if x.s.ledger == nil {
		return
	}
	r := ledger.Row{
		ID:        rowID(),
		Time:      x.start,
		RequestID: x.rid,
		KeyName:   x.keyName,
		Team:      x.team,
		API:       x.api,
		Model:     x.model,
		Upstream:  x.upstream,
		Status:    x.status,
		Stream:    x.stream,
		CacheHit:  x.upstream == metrics.CacheUpstream,
		Latency:   d,
		TTFT:      x.ttft,
		Attempts:  x.attempts,
	}
	if x.usageKnown {
		r.UsageKnown = true
		r.PromptTokens, r.CompletionTokens = int64(x.prompt), int64(x.completion)
		r.CachedTokens, r.ReasoningTokens = int64(x.cacheRead), int64(x.reasoning)
		switch {
		case r.CacheHit:
			r.SavingsUSD = x.savedByCache()
		case x.answered && x.byID == nil:
			u := x.billed()
			r.CostUSD = x.price.UsageCost(u)
			if x.reference != nil {
				r.SavingsUSD = x.reference.UsageCost(u) - r.CostUSD
			}
		}
	}
	r.FallbackPath = x.fallbackPath()
	x.s.ledger.Write(r)
}

// fallbackPath names the upstreams asked, in order, ending with the one
// that answered; nil when none was asked.
func (x *exchange) fallbackPath() []string {
	answered := x.upstream != metrics.NoUpstream && x.upstream != metrics.CacheUpstream
	n := 0
	for _, f := range x.failures {
		if f.Attempts > 0 {
			n++
		}
	}
	if answered {
		n++
	}
	if n == 0 {
		return nil
	}
	path := make([]string, 0, n)
	for _, f := range x.failures {
		if f.Attempts > 0 {
			path = append(path, f.Upstream)
		}
	}
	if answered {
		path = append(path, x.upstream)
	}
	return path
}

// rowID is a ledger row's own id: 128 random bits, unique whatever
// X-Request-Id the client chose.
func rowID() string {
	var b [16]byte
	u1, u2 := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		b[i], b[8+i] = byte(u1>>(8*i)), byte(u2>>(8*i))
	}
	return hex.EncodeToString(b[:])
}
