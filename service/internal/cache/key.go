package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unsafe"

	"github.com/tidwall/gjson"

	"github.com/relaygate/relaygate/service/internal/jsondepth"
)

// KeyPrefix starts every cache key; the version changes when the canonical
// form does, so old entries are never read with a new meaning. v2: the
// scope joined the key, and strings and duplicate keys are kept exactly
// (v1 decoded lone surrogates to U+FFFD and kept the last of duplicate
// keys, so different prompts could share an entry).
const KeyPrefix = "relaygate:cache:v2:"

// maxKeyNesting bounds how deeply a body Key canonicalises may nest, as
// encoding/json does: validation and the walk recurse once per level.
const maxKeyNesting = 10000

// ignoredFields do not change the answer, so requests differing only in them
// share an entry:
//   - stream, stream_options: how the answer is delivered; a streamed request
//     is served by replaying the cached whole answer (StreamReplay).
//   - user, safety_identifier: end-user ids for the provider's abuse monitoring.
//   - metadata, store: whether and how the provider keeps the completion.
//   - service_tier: the provider's latency and price tier, not the output.
//   - prompt_cache_key: a routing hint for the provider's own prompt cache.
var ignoredFields = []string{
	"stream", "stream_options",
	"user", "safety_identifier",
	"metadata", "store",
	"service_tier",
	"prompt_cache_key",
}

// Key returns the cache key for a request to path with the given JSON body,
// in scope, or ok=false when the request must not be cached. err is set when
// the body is not a JSON object or scope is not a scope id.
//
// scope partitions the cache: an entry is only ever read under the scope it
// was stored in (the gateway passes "global", or one per client key), so
// neither the answer nor its Age crosses it. It must be non-empty and
// without ':'.
//
// A request is cacheable when its answer is meant to be reproducible:
//   - temperature is 0 (any spelling: 0, 0.0, -0, 0e3). An absent or null
//     temperature is NOT cacheable: OpenAI's default is 1, so the client asked
//     for a sampled answer and would be wrong to get the same one every time;
//   - or the endpoint does no sampling (embeddings);
//   - or force is true: the client asked for caching explicitly.
//
// The key is KeyPrefix, the scope, and the hex SHA-256 of the endpoint and
// the canonical body (see canonical). /chat/completions/stream keys as
// /chat/completions, since it is the same request, streamed.
func Key(scope, path string, body []byte, force bool) (key string, ok bool, err error) {
	return KeyFor(scope, path, "", body, force)
}

// KeyFor is Key for a request whose answer also depends on variant, what
// besides the body selects it (Anthropic's API version and beta headers).
// Requests differing only in variant never share an entry; an empty
// variant keys exactly as Key.
func KeyFor(scope, path, variant string, body []byte, force bool) (key string, ok bool, err error) {
	if scope == "" || strings.IndexByte(scope, ':') >= 0 {
		return "", false, fmt.Errorf("cache key: scope %q is not a scope id", scope)
	}
	if jsondepth.Exceeds(body, maxKeyNesting) || !gjson.ValidBytes(body) {
		return "", false, errors.New("cache key: request body is not valid JSON")
	}
	// A view of body, not a copy (gjson.ParseBytes copies); body does not
	// change during the call, and nothing of it is kept after.
	root := gjson.Parse(unsafe.String(unsafe.SliceData(body), len(body)))
	if !root.IsObject() {
		return "", false, errors.New("cache key: request body is not a JSON object")
	}
	endpoint := canonicalEndpoint(path)
	if !force && !deterministic(endpoint, root) {
		return "", false, nil
	}

	c := canonPool.Get().(*canonicaliser)
	c.buf = append(c.buf[:0], endpoint...)
	c.buf = append(c.buf, 0)
	if variant != "" {
		// \x01 cannot start a canonical body (an object), so the
		// variant cannot be confused with one.
		c.buf = append(c.buf, 1)
		c.buf = strconv.AppendQuote(c.buf, variant)
		c.buf = append(c.buf, 0)
	}
	c.object(root, true)
	sum := sha256.Sum256(c.buf)
	if cap(c.buf) <= maxPooledCanon && cap(c.members) <= maxPooledMembers {
		canonPool.Put(c)
	}

	var b strings.Builder
	b.Grow(len(KeyPrefix) + len(scope) + 1 + 2*len(sum))
	b.WriteString(KeyPrefix)
	b.WriteString(scope)
	b.WriteByte(':')
	var hx [2 * sha256.Size]byte
	hex.Encode(hx[:], sum[:])
	b.Write(hx[:])
	return b.String(), true, nil
}

// canonicalEndpoint maps the paths that name the same operation to one.
func canonicalEndpoint(path string) string {
	p := strings.TrimRight(path, "/")
	if strings.HasSuffix(p, "/chat/completions/stream") {
		p = strings.TrimSuffix(p, "/stream")
	}
	return p
}

// deterministic reports whether the request asks for a reproducible
// answer. Of duplicate temperature keys the last counts, as with most
// parsers (the gateway refuses such bodies before asking).
func deterministic(endpoint string, req gjson.Result) bool {
	if strings.HasSuffix(endpoint, "/embeddings") || strings.HasSuffix(endpoint, "/messages/count_tokens") {
		return true // no sampling: a count or a vector is the same every time
	}
	var t gjson.Result
	req.ForEach(func(k, v gjson.Result) bool {
		if k.Str == "temperature" {
			t = v
		}
		return true
	})
	if t.Type != gjson.Number {
		return false // absent, null, or not a number: the upstream's default (1) applies
	}
	f, err := strconv.ParseFloat(t.Raw, 64)
	return err == nil && f == 0
}

// canonicalNumber spells a JSON number one way per value. Integers keep their
// exact digits, so seeds and ids beyond float64 precision stay distinct; other
// numbers go through float64 and come out in their shortest form, integral
// ones as integers ("1.0" → "1", "1e2" → "100", "0.50" → "0.5").
func canonicalNumber(s string) string {
	if isIntegerLiteral(s) {
		if strings.TrimLeft(s, "-0") == "" {
			return "0" // -0
		}
		return s
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return s // beyond float64's range: keep the spelling
	}
	if f == math.Trunc(f) && math.Abs(f) <= 1<<53 {
		return strconv.FormatInt(int64(f), 10)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

func isIntegerLiteral(s string) bool {
	s = strings.TrimPrefix(s, "-")
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
