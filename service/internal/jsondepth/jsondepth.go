// Package jsondepth measures how deeply a JSON text nests, without
// recursing: JSON libraries (gjson's validation, encoding/json) recurse
// once per level, so a body of millions of '[' would overflow the stack
// of whoever parses it first. The gateway's request parser and the cache
// key both ask it before they parse.
package jsondepth

import "bytes"

// Exceeds reports whether b nests arrays and objects more than limit
// levels deep. It is iterative, so it cannot overflow, and it only has to
// be right for valid JSON: whatever else it lets through, gjson refuses at
// or before the byte where this scan's count would go wrong.
func Exceeds(b []byte, limit int) bool {
	depth := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			// Brackets inside a string are text. Jump quote to quote
			// (IndexByte is vectorised, and prompts are mostly strings);
			// a quote after an odd run of backslashes is escaped.
			for {
				j := bytes.IndexByte(b[i+1:], '"')
				if j < 0 {
					return false // unterminated: not JSON, gjson refuses it
				}
				i += 1 + j
				k := i - 1
				for b[k] == '\\' { // stops at the opening quote at the latest
					k--
				}
				if (i-1-k)%2 == 0 {
					break
				}
			}
		case '[', '{':
			depth++
			if depth > limit {
				return true
			}
		case ']', '}':
			depth--
		}
	}
	return false
}
