// Package commalist reads the comma-separated lists the commands take as
// flags ("a, b,c"), one way for every command.
package commalist

import "strings"

// Split returns the items of s, each trimmed of spaces, leaving out empty
// ones: "a, ,b," is [a b], "" is nil.
func Split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
