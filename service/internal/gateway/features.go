package gateway

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/cache"
	"github.com/relaygate/relaygate/service/internal/metrics"
)

// CacheHeader lets a client steer the cache per request: "force" caches an
// answer even when it is not deterministic, "bypass" skips the cache.
const CacheHeader = "X-Relaygate-Cache"

// allow applies the per-key rate limits. A Redis that cannot be reached
// lets the request through (and is counted): limits protect spend, an
// outage of the limiter must not become an outage of the gateway.
func (x *exchange) allow() bool {
	l := x.s.limiter
	if l == nil {
		return true
	}
	d, err := l.Allow(x.r.Context(), x.client)
	if err != nil {
		x.s.metrics.RateLimitError()
		return true
	}
	if d.Allowed {
		return true
	}
	x.s.metrics.RateLimited(d.Limit)
	secs := int(math.Ceil(d.RetryAfter.Seconds()))
	if secs < 1 {
		secs = 1
	}
	x.w.Header().Set("Retry-After", strconv.Itoa(secs))
	what := "requests"
	if d.Limit == "tpm" {
		what = "tokens"
	}
	x.fail(&apiError{Status: http.StatusTooManyRequests, Type: typeRateLimit, Code: "rate_limit_exceeded",
		Message: fmt.Sprintf("Rate limit reached for this key: too many %s per minute (%s). Retry after %ds.", what, d.Limit, secs)})
	return false
}

// chargeTokens records a finished request's tokens against the key's
// tokens-per-minute budget.
func (x *exchange) chargeTokens() {
	if x.s.limiter == nil || x.st.cfg.RateLimit.TPM == 0 {
		return
	}
	x.flush()
	_ = x.s.limiter.AddTokens(context.WithoutCancel(x.r.Context()), x.client, x.prompt+x.completion)
}

// cacheScope is the cache partition this request reads and writes
// (config cache.scope): "global", or one per client key (a named key's
// rotated secrets share one). Under scope team the named keys of a team
// share; a key without a team, and every key of client_keys, is a team of
// its own. Without keys every client is the one client "open", so every
// scope shares.
func (x *exchange) cacheScope() string {
	switch {
	case x.st.cfg.Cache.Scope == config.CacheScopeGlobal:
		return "global"
	case x.st.cfg.Cache.Scope == config.CacheScopeTeam && x.team != "":
		return "team." + x.team
	}
	return "key." + x.client
}

// fromCache answers the request from the cache when it may and can. It
// leaves x.cacheKey set on a miss, so the upstream's answer is stored.
func (x *exchange) fromCache(body []byte, req *request) bool {
	c := x.s.cache
	if c == nil {
		return false
	}
	switch x.ep {
	case epResponses, epModerations, epImages, epSpeech, epTranscriptions:
		// Responses are stateful (see responses.go); images and speech
		// are sampled and large; a moderation's verdict follows the
		// model's current version; a transcription is a form, not JSON.
		// None is cached.
		x.s.metrics.Cache(string(cache.ResultBypass))
		return false
	}
	mode := x.r.Header.Get(CacheHeader)
	force := mode == "force"
	deterministic := force || req.temperatureZero || x.ep == epEmbeddings || x.ep == epCountTokens
	// A stream is served from a whole answer replayed as its events:
	// chat's and Messages' have a replay (cache.StreamReplay,
	// cache.MessagesStreamReplay), legacy completions' not yet.
	if mode == "bypass" || !deterministic || (x.stream && x.ep != epChat && x.ep != epMessages) {
		x.s.metrics.Cache(string(cache.ResultBypass))
		return false
	}
	key, ok, err := cache.KeyFor(x.cacheScope(), x.ep.upstreamPath(), x.cacheVariant(), body, force)
	if err != nil || !ok {
		x.s.metrics.Cache(string(cache.ResultBypass))
		return false
	}
	e, res, _ := c.Get(x.r.Context(), key)
	if res == cache.ResultHit && !cacheableAnswer(x.ep, e.ContentType, e.Body) {
		// Stored before answers were checked (or by an older replica):
		// not served, and replaced by the upstream's next answer.
		res = cache.ResultMiss
	}
	var replay []byte
	if res == cache.ResultHit && x.stream {
		if x.ep == epMessages {
			replay, err = cache.MessagesStreamReplay(e.Body)
		} else {
			replay, err = cache.StreamReplay(e.Body, req.includeUsage)
		}
		if err != nil {
			// Counted as the miss it turns into: the upstream answers.
			x.s.log.Warn("cached answer cannot be replayed as a stream; asking the upstream", "request_id", x.rid, "error", err.Error())
			res = cache.ResultMiss
		}
	}
	x.s.metrics.Cache(string(res))
	x.cacheResult = "MISS"
	if res != cache.ResultHit {
		// A streamed answer is not stored: only whole answers are, so
		// a stream is served from the cache only after a whole answer
		// to the same request.
		if !x.stream {
			x.cacheKey = key
		}
		return false
	}
	x.cacheResult = "HIT"
	h := x.w.Header()
	h.Set("X-Cache", "HIT")
	h.Set("X-Relaygate-Upstream", metrics.CacheUpstream)
	h.Set("X-Relaygate-Cached-From", e.Upstream)
	if !e.StoredAt.IsZero() {
		h.Set("Age", strconv.Itoa(int(time.Since(e.StoredAt).Seconds())))
	}
	x.readUsage(e.Body)
	x.status, x.upstream, x.committed = http.StatusOK, metrics.CacheUpstream, true
	if x.stream {
		h.Set("Content-Type", "text/event-stream; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		x.writeHeader(http.StatusOK)
		x.ttft = time.Since(x.start)
		if x.writeAll(replay) != nil {
			x.status, x.errMsg = 499, "client went away"
		}
		return true
	}
	h.Set("Content-Type", e.ContentType)
	h.Set("Content-Length", strconv.Itoa(len(e.Body)))
	x.writeHeader(http.StatusOK)
	if x.writeAll(e.Body) != nil {
		x.status, x.errMsg = 499, "client went away"
	}
	return true
}

// store keeps a whole answer for the next identical request. The client
// already has its bytes: they are flushed first, so a slow Redis delays
// nothing but this handler's return.
func (x *exchange) store(data []byte, contentType, upstream string) {
	x.flush()
	_ = x.s.cache.Set(context.WithoutCancel(x.r.Context()), x.cacheKey, cache.Entry{
		Body: data, ContentType: contentType, Upstream: upstream, StoredAt: time.Now(),
	})
}

func (x *exchange) flush() {
	_ = http.NewResponseController(x.w).Flush()
}

// savedByCache is what a cache hit would have cost: at the reference
// price when there is one, else at the price of the model's first upstream.
func (x *exchange) savedByCache() float64 {
	if x.reference != nil {
		return x.reference.UsageCost(x.billed())
	}
	m := x.st.models[x.model]
	if m == nil || len(m.chain) == 0 {
		return 0
	}
	return m.chain[0].Primary().Price.UsageCost(x.billed())
}
