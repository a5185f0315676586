package gateway

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// A body with the same key twice is read differently by different parsers:
// gjson's Get and some upstreams keep the first, encoding/json and Python
// keep the last, and Go decoders into structs match keys case-insensitively
// (with Unicode folding: "ſtream" is "stream" to them). The gateway would
// route and bill one model while the upstream serves another, or key the
// cache on one prompt while the upstream answers another. So the gateway
// refuses such bodies instead of guessing how the upstream reads them.

// readKeys are the top-level keys the gateway or the cache key interprets
// (routing, billing, streaming, cacheability). A key that differs from one
// of them only in case is refused too, even alone: a case-insensitive
// upstream would act on it while the gateway ignores it ("Stream": true
// streams an answer the gateway bills as a whole one, without usage).
var readKeys = []string{
	"model", "messages", "input", "stream", "stream_options", "temperature",
	// Read for token estimates by the rate limiter's max-tokens accounting,
	// and for the bound on the usage an answer may report (n choices).
	"max_tokens", "max_completion_tokens", "n",
	// Responses API: the bound on its usage, the response a request
	// continues (which upstream it must go to), and whether its response
	// is kept (whether its id is remembered).
	"max_output_tokens", "previous_response_id", "store",
	// Legacy completions and image generation: what the cache key and the
	// required-field check read.
	"prompt", "best_of",
}

// streamOptionKeys are the keys the gateway reads inside stream_options.
var streamOptionKeys = []string{"include_usage"}

// smallObject is how many keys an object may have before keySet switches
// from comparing each key with every earlier one to a map: quadratic work
// is cheaper than a map below it, and must not be allowed above it, where
// a hostile body of a million keys would take hours.
const smallObject = 16

// keySet finds duplicate and case-variant keys among one object's keys, in
// one pass, allocating nothing for objects of up to smallObject keys.
// Keys are compared decoded (gjson's key.Str), so "model" and "\u006dodel"
// are the same key, as they are to every JSON parser. A lone surrogate
// decodes to U+FFFD, so two keys that differ only in lone surrogates count
// as duplicates: refused, which errs on the safe side.
type keySet struct {
	read  []string // keys refused in another case
	n     int
	small [smallObject]string
	big   map[string]struct{}
}

// add records key k; it returns a 400 naming k when k repeats an earlier
// key or is a case variant of a key in read.
func (s *keySet) add(k string) *apiError {
	if e := s.caseVariant(k); e != nil {
		return e
	}
	if s.big == nil {
		for _, p := range s.small[:s.n] {
			if p == k {
				return duplicateKey(k)
			}
		}
		if s.n < smallObject {
			s.small[s.n] = k
			s.n++
			return nil
		}
		s.big = make(map[string]struct{}, 2*smallObject)
		for _, p := range s.small {
			s.big[p] = struct{}{}
		}
	}
	if _, dup := s.big[k]; dup {
		return duplicateKey(k)
	}
	s.big[k] = struct{}{}
	return nil
}

// caseVariant refuses k when it is not one of s.read but equal to one of
// them under Unicode case folding (strings.EqualFold folds as
// encoding/json does).
func (s *keySet) caseVariant(k string) *apiError {
	for _, r := range s.read {
		if k == r {
			return nil
		}
	}
	// Most keys are ruled out cheaply: a fold changes a byte length by at
	// most 3× (ASCII 'k' is the 3-byte Kelvin sign), and an ASCII first
	// byte must be the name's first letter in either case (the names
	// start with a lower-case letter).
	for _, r := range s.read {
		if len(k) < len(r) || len(k) > 3*len(r) || k[0] < utf8.RuneSelf && k[0]|0x20 != r[0] {
			continue
		}
		if strings.EqualFold(k, r) {
			return errBadRequestParam("invalid_key_case", fmt.Sprintf(
				"The request body has the key '%s', which differs from '%s' only in case; upstreams disagree on whether that is the same key, so the gateway refuses it. Send it as '%s'.",
				truncate(k, 100), r, r), k)
		}
	}
	return nil
}

func duplicateKey(k string) *apiError {
	return errBadRequestParam("duplicate_key", fmt.Sprintf(
		"The request body has the key '%s' more than once; JSON parsers disagree on which one counts, so the gateway refuses duplicate keys.",
		truncate(k, 100)), k)
}

func errBadRequestParam(code, msg, param string) *apiError {
	e := errBadRequest(code, msg)
	e.Param = truncate(param, 100)
	return e
}
