package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// KeyPrefix starts every cache key; the version changes when the canonical
// form does, so old entries are never read with a new meaning.
const KeyPrefix = "relaygate:cache:v1:"

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
// or ok=false when the request must not be cached. err is set when the body
// is not a JSON object.
//
// A request is cacheable when its answer is meant to be reproducible:
//   - temperature is 0 (any spelling: 0, 0.0, -0, 0e3). An absent or null
//     temperature is NOT cacheable: OpenAI's default is 1, so the client asked
//     for a sampled answer and would be wrong to get the same one every time;
//   - or the endpoint does no sampling (embeddings);
//   - or force is true: the client asked for caching explicitly.
//
// The key is KeyPrefix plus the hex SHA-256 of the endpoint and the canonical
// body: object keys sorted, whitespace and string escapes normalised by
// re-encoding, numbers normalised (1, 1.0 and 1e0 are one number), and
// ignoredFields removed. /chat/completions/stream keys as /chat/completions,
// since it is the same request, streamed.
func Key(path string, body []byte, force bool) (key string, ok bool, err error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var req map[string]any
	if err := dec.Decode(&req); err != nil {
		return "", false, fmt.Errorf("cache key: request body is not a JSON object: %w", err)
	}
	if req == nil {
		return "", false, errors.New("cache key: request body is null, not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return "", false, errors.New("cache key: request body has data after the JSON object")
	}

	endpoint := canonicalEndpoint(path)
	if !force && !deterministic(endpoint, req) {
		return "", false, nil
	}
	for _, f := range ignoredFields {
		delete(req, f)
	}
	canonical, err := json.Marshal(normaliseNumbers(req))
	if err != nil {
		return "", false, fmt.Errorf("cache key: encode canonical body: %w", err)
	}

	h := sha256.New()
	h.Write([]byte(endpoint))
	h.Write([]byte{0})
	h.Write(canonical)
	return KeyPrefix + hex.EncodeToString(h.Sum(nil)), true, nil
}

// canonicalEndpoint maps the paths that name the same operation to one.
func canonicalEndpoint(path string) string {
	p := strings.TrimRight(path, "/")
	if strings.HasSuffix(p, "/chat/completions/stream") {
		p = strings.TrimSuffix(p, "/stream")
	}
	return p
}

func deterministic(endpoint string, req map[string]any) bool {
	if strings.HasSuffix(endpoint, "/embeddings") {
		return true
	}
	t, ok := req["temperature"].(json.Number)
	if !ok {
		return false // absent, null, or not a number: the upstream's default (1) applies
	}
	f, err := t.Float64()
	return err == nil && f == 0
}

// normaliseNumbers rewrites every number in v to one spelling per value, so
// json.Marshal (which sorts object keys) yields one encoding per request.
func normaliseNumbers(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = normaliseNumbers(x)
		}
		return v
	case []any:
		for i, x := range v {
			v[i] = normaliseNumbers(x)
		}
		return v
	case json.Number:
		return json.Number(canonicalNumber(string(v)))
	default:
		return v
	}
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
