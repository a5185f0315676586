package cache

import (
	"slices"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// The canonical form of a body is what the cache key hashes. It must be
// one spelling per request an upstream could tell apart and no more: two
// bodies with one canonical form must read the same to every upstream, so
// a client cannot plant an answer for another's prompt. It is JSON (so a
// test can decode it), written as follows:
//   - object members sorted by key, stably: duplicate keys are all kept, in
//     their order, since upstreams disagree on which one counts;
//   - strings as their sequence of UTF-16 code units (JSON's own model):
//     escapes of characters written as UTF-8, except '"', '\' and control
//     characters, which are escaped; a lone surrogate, which encoding/json
//     and gjson decode to U+FFFD but Python and JavaScript keep, stays an
//     escape, \udXXX in lower case, so it differs from U+FFFD and from any
//     other lone surrogate;
//   - numbers in canonicalNumber's spelling; no whitespace;
//   - ignoredFields dropped from the top level.

// canonicaliser is the scratch of one Key call, pooled: members is a stack
// of the members of the objects being written, innermost last.
type canonicaliser struct {
	buf     []byte
	members []member
}

// member is one object member; the value is kept as its raw JSON (a view of
// the body), a third of a gjson.Result's size for bodies of many keys.
type member struct {
	key string // canonical spelling, quotes included
	raw string
}

// maxPooledCanon and maxPooledMembers keep a rare huge body's scratch out
// of the pool.
const (
	maxPooledCanon   = 1 << 20
	maxPooledMembers = 4096
)

var canonPool = sync.Pool{New: func() any { return &canonicaliser{buf: make([]byte, 0, 4<<10)} }}

// value appends v's canonical form.
func (c *canonicaliser) value(v gjson.Result) {
	switch {
	case v.Type == gjson.String:
		c.buf = appendCanonicalString(c.buf, v.Raw)
	case v.Type == gjson.Number:
		c.buf = append(c.buf, canonicalNumber(v.Raw)...)
	case v.IsObject():
		c.object(v, false)
	case v.IsArray():
		c.buf = append(c.buf, '[')
		first := true
		v.ForEach(func(_, e gjson.Result) bool {
			if !first {
				c.buf = append(c.buf, ',')
			}
			first = false
			c.value(e)
			return true
		})
		c.buf = append(c.buf, ']')
	default: // true, false, null
		c.buf = append(c.buf, v.Raw...)
	}
}

// raw appends the canonical form of a value given as its raw JSON, without
// gjson.Parse's decoding of strings (an allocation per escaped string).
func (c *canonicaliser) raw(raw string) {
	switch raw[0] {
	case '"':
		c.buf = appendCanonicalString(c.buf, raw)
	case '{', '[':
		c.value(gjson.Parse(raw))
	case 't', 'f', 'n':
		c.buf = append(c.buf, raw...)
	default:
		c.buf = append(c.buf, canonicalNumber(raw)...)
	}
}

// object appends o's canonical form; top drops ignoredFields.
func (c *canonicaliser) object(o gjson.Result, top bool) {
	base := len(c.members)
	o.ForEach(func(k, v gjson.Result) bool {
		if top && slices.Contains(ignoredFields, k.Str) {
			return true
		}
		key := k.Raw
		if strings.IndexByte(key, '\\') >= 0 {
			key = string(appendCanonicalString(nil, key))
		}
		c.members = append(c.members, member{key, v.Raw})
		return true
	})
	ms := c.members[base:]
	slices.SortStableFunc(ms, func(a, b member) int { return strings.Compare(a.key, b.key) })
	c.buf = append(c.buf, '{')
	for i := range ms {
		if i > 0 {
			c.buf = append(c.buf, ',')
		}
		c.buf = append(c.buf, ms[i].key...)
		c.buf = append(c.buf, ':')
		// c.members may grow (and move) under a nested object: index it
		// afresh rather than through ms.
		c.raw(c.members[base+i].raw)
	}
	c.buf = append(c.buf, '}')
	clear(c.members[base:]) // drop references into the body before pooling
	c.members = c.members[:base]
}

// appendCanonicalString appends the canonical spelling of raw, a valid JSON
// string token (quotes included). Without escapes a token is already
// canonical: JSON strings cannot hold '"', '\' or control characters raw.
func appendCanonicalString(dst []byte, raw string) []byte {
	if strings.IndexByte(raw, '\\') < 0 {
		return append(dst, raw...)
	}
	s := raw[1 : len(raw)-1]
	dst = append(dst, '"')
	for len(s) > 0 {
		i := strings.IndexByte(s, '\\')
		if i < 0 {
			dst = append(dst, s...)
			break
		}
		dst = append(dst, s[:i]...)
		s = s[i:]
		if len(s) < 2 {
			break // not valid JSON; Key validated it
		}
		switch s[1] {
		case 'u':
			r, ok := hex4(s[2:])
			if !ok {
				return append(dst, s...) // not valid JSON; kept as written
			}
			s = s[6:]
			if r >= 0xD800 && r < 0xDC00 && len(s) >= 6 && s[0] == '\\' && s[1] == 'u' {
				if lo, ok := hex4(s[2:]); ok && lo >= 0xDC00 && lo < 0xE000 {
					dst = appendCanonicalRune(dst, 0x10000+(r-0xD800)<<10+(lo-0xDC00))
					s = s[6:]
					continue
				}
			}
			if r >= 0xD800 && r < 0xE000 {
				dst = appendEscape(dst, r) // lone surrogate
				continue
			}
			dst = appendCanonicalRune(dst, r)
			continue
		case 'b':
			dst = appendCanonicalRune(dst, '\b')
		case 'f':
			dst = appendCanonicalRune(dst, '\f')
		case 'n':
			dst = appendCanonicalRune(dst, '\n')
		case 'r':
			dst = appendCanonicalRune(dst, '\r')
		case 't':
			dst = appendCanonicalRune(dst, '\t')
		default: // '"', '\\', '/'
			dst = appendCanonicalRune(dst, rune(s[1]))
		}
		s = s[2:]
	}
	return append(dst, '"')
}

func appendCanonicalRune(dst []byte, r rune) []byte {
	switch {
	case r == '"' || r == '\\':
		return append(dst, '\\', byte(r))
	case r < 0x20:
		return appendEscape(dst, r)
	}
	return utf8.AppendRune(dst, r)
}

func appendEscape(dst []byte, r rune) []byte {
	const hexDigits = "0123456789abcdef"
	return append(dst, '\\', 'u', hexDigits[r>>12&0xF], hexDigits[r>>8&0xF], hexDigits[r>>4&0xF], hexDigits[r&0xF])
}

func hex4(s string) (rune, bool) {
	if len(s) < 4 {
		return 0, false
	}
	var r rune
	for i := 0; i < 4; i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}
