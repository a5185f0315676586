// Package doccheck reads the project's Markdown the way GitHub renders it,
// so tests can hold the documentation to the files, headings and names it
// refers to: a moved page or a renamed heading then fails `make test`
// instead of leaving a reader, or an alert's runbook_url, at a dead end.
package doccheck

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"
)

// Slug is the anchor GitHub gives a heading's text: lowercased, every
// character but letters, digits, '_', '-' and spaces dropped, spaces turned
// to '-'. Markdown in the heading counts only by its text: `code` and
// [link](url) give their text.
func Slug(heading string) string {
	heading = linkRE.ReplaceAllString(heading, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

var (
	headingRE = regexp.MustCompile(`^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$`)
	fenceRE   = regexp.MustCompile("^ {0,3}(```+|~~~+)")
	// linkRE matches inline links and images, [text](target "title").
	linkRE     = regexp.MustCompile(`!?\[([^\]]*)\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)`)
	codeSpanRE = regexp.MustCompile("`+[^`]*`+")
	schemeRE   = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)
)

// lines yields a document's lines outside fenced code blocks, numbered
// from 1, since neither headings nor links exist inside a fence.
func lines(md string, f func(n int, line string)) {
	fence := ""
	for i, line := range strings.Split(md, "\n") {
		line = strings.TrimRight(line, "\r")
		if m := fenceRE.FindStringSubmatch(line); m != nil {
			switch {
			case fence == "":
				fence = m[1]
				continue
			case strings.HasPrefix(m[1], fence[:1]) && len(m[1]) >= len(fence):
				fence = ""
				continue
			}
		}
		if fence == "" {
			f(i+1, line)
		}
	}
}

// Headings returns the text of a document's ATX headings, in order.
func Headings(md string) []string {
	var out []string
	lines(md, func(_ int, line string) {
		if m := headingRE.FindStringSubmatch(line); m != nil {
			out = append(out, m[2])
		}
	})
	return out
}

// Anchors returns every anchor a document's headings give, a repeated slug
// numbered -1, -2 … as GitHub numbers it.
func Anchors(md string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	for _, h := range Headings(md) {
		s := Slug(h)
		if n := seen[s]; n > 0 {
			out[fmt.Sprintf("%s-%d", s, n)] = true
		} else {
			out[s] = true
		}
		seen[s]++
	}
	return out
}

// Link is one inline link's target and the line it is on.
type Link struct {
	Line   int
	Target string
}

// Links returns a document's inline link and image targets, outside code
// blocks and code spans (where a [x](y) is text, not a link).
func Links(md string) []Link {
	var out []Link
	lines(md, func(n int, line string) {
		line = codeSpanRE.ReplaceAllString(line, "")
		for _, m := range linkRE.FindAllStringSubmatch(line, -1) {
			out = append(out, Link{Line: n, Target: m[2]})
		}
	})
	return out
}

// CheckFile reports every relative link of the Markdown file at path that
// leads nowhere: to a file that does not exist, or to an #anchor that no
// heading of the Markdown file it names gives. Links with a scheme
// (https:, mailto:) are not followed.
func CheckFile(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("doccheck: %w", err)
	}
	var problems []string
	anchors := map[string]map[string]bool{}
	for _, l := range Links(string(data)) {
		if l.Target == "" || schemeRE.MatchString(l.Target) {
			continue
		}
		file, frag, _ := strings.Cut(l.Target, "#")
		target := path
		if file != "" {
			p, err := url.PathUnescape(file)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s:%d: link %q: %v", path, l.Line, l.Target, err))
				continue
			}
			target = filepath.Join(filepath.Dir(path), filepath.FromSlash(p))
			if _, err := os.Stat(target); err != nil {
				problems = append(problems, fmt.Sprintf("%s:%d: link %q: no such file", path, l.Line, l.Target))
				continue
			}
		}
		if frag == "" || !strings.EqualFold(filepath.Ext(target), ".md") {
			continue
		}
		a, ok := anchors[target]
		if !ok {
			b, err := os.ReadFile(target)
			if err != nil {
				return nil, fmt.Errorf("doccheck: %w", err)
			}
			a = Anchors(string(b))
			anchors[target] = a
		}
		if !a[frag] {
			problems = append(problems, fmt.Sprintf("%s:%d: link %q: no heading there gives the anchor #%s", path, l.Line, l.Target, frag))
		}
	}
	return problems, nil
}
