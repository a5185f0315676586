package upstreamsim

import (
	"github.com/tidwall/gjson"
)

// vocabulary is what answers are made of. The words are plain ASCII letters,
// so they go into JSON strings without escaping, and the size is a power of
// two, so a word is picked with a mask.
var vocabulary = [64]string{
	"relay", "gateway", "token", "stream", "cache", "model", "latency", "upstream",
	"route", "fallback", "retry", "budget", "metric", "prompt", "answer", "signal",
	"packet", "vector", "kernel", "tensor", "shard", "batch", "queue", "socket",
	"buffer", "header", "chunk", "record", "ledger", "cluster", "replica", "region",
	"quota", "window", "cursor", "offset", "marker", "anchor", "beacon", "bridge",
	"canyon", "delta", "ember", "fjord", "glacier", "harbor", "island", "jungle",
	"lagoon", "meadow", "nebula", "orbit", "prairie", "quartz", "river", "summit",
	"tundra", "valley", "willow", "zenith", "copper", "silver", "amber", "cobalt",
}

// spacedVocabulary holds the words with a leading space: every token after the
// first carries its separator, so streamed deltas concatenate to exactly the
// non-streamed content.
var spacedVocabulary = func() (v [len(vocabulary)]string) {
	for i, w := range vocabulary {
		v[i] = " " + w
	}
	return v
}()

// wordStream yields the deterministic token sequence of one answer.
type wordStream struct {
	rng   splitMix
	count int
}

func newWordStream(seed uint64) wordStream {
	return wordStream{rng: newSplitMix(seed, 0)}
}

// appendWords appends the first n words of the answer drawn from seed.
func appendWords(dst []byte, seed uint64, n int) []byte {
	words := newWordStream(seed)
	for range n {
		dst = words.appendNext(dst)
	}
	return dst
}

func (ws *wordStream) appendNext(dst []byte) []byte {
	i := ws.rng.next() & uint64(len(vocabulary)-1)
	ws.count++
	if ws.count == 1 {
		return append(dst, vocabulary[i]...)
	}
	return append(dst, spacedVocabulary[i]...)
}

// fnv1a is 64-bit FNV-1a, kept as a value type so hashing allocates nothing.
type fnv1a uint64

const (
	fnvOffset fnv1a = 14695981039346656037
	fnvPrime  fnv1a = 1099511628211
)

func (h fnv1a) add(s string) fnv1a {
	for i := 0; i < len(s); i++ {
		h ^= fnv1a(s[i])
		h *= fnvPrime
	}
	// A separator after each field keeps ("ab","c") apart from ("a","bc").
	h ^= 0xff
	h *= fnvPrime
	return h
}

// promptDigest summarises the messages of a chat request: the seed of its
// answer and its estimated prompt size.
type promptDigest struct {
	seed      uint64
	textBytes int
}

// digestMessages hashes the model and each message's role and text. Only
// these feed the answer, so the same conversation gets the same answer
// whatever else the request carries (stream, temperature, user, ...): that is
// what the gateway's cache tests rely on.
func digestMessages(model string, messages gjson.Result) promptDigest {
	h := fnvOffset.add(model)
	n := 0
	messages.ForEach(func(_, msg gjson.Result) bool {
		h = h.add(msg.Get("role").String())
		content := msg.Get("content")
		switch {
		case content.Type == gjson.String:
			h = h.add(content.Str)
			n += len(content.Str)
		case content.IsArray():
			// Content parts: only the text parts count.
			content.ForEach(func(_, part gjson.Result) bool {
				if text := part.Get("text"); text.Type == gjson.String {
					h = h.add(text.Str)
					n += len(text.Str)
				}
				return true
			})
		}
		return true
	})
	return promptDigest{seed: uint64(h), textBytes: n}
}

// estimateTokens is the simulator's token count for text: one token per four
// bytes, rounded up. Real tokenizers average close to that on English text,
// and the rule is simple enough for tests to compute expected usage by hand.
func estimateTokens(textBytes int) int {
	return (textBytes + 3) / 4
}
