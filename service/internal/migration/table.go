package migration

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// Table is a titled grid of figures with notes under it, rendered as aligned
// text for a terminal or as Markdown for a pull request or wiki page. One
// without columns is a titled list of notes.
type Table struct {
	Title   string
	Columns []string
	Rows    [][]string
	Notes   []string
}

// WriteText writes the table with aligned columns.
func (t *Table) WriteText(w io.Writer) error {
	var b strings.Builder
	if len(t.Columns) == 0 {
		fmt.Fprintf(&b, "%s\n", t.Title)
		for _, n := range t.Notes {
			fmt.Fprintf(&b, "  %s\n", n)
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	if t.Title != "" {
		fmt.Fprintf(&b, "%s\n\n", t.Title)
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(t.Columns, "\t"))
	for _, r := range t.Rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(t.Notes) > 0 {
		b.WriteString("\n")
		for _, n := range t.Notes {
			fmt.Fprintf(&b, "  %s\n", n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteMarkdown writes the table as a GitHub-flavoured Markdown table, the
// title as a heading at level (2 for "##"), and the notes as a list.
func (t *Table) WriteMarkdown(w io.Writer, level int) error {
	var b strings.Builder
	if t.Title != "" {
		fmt.Fprintf(&b, "%s %s\n\n", strings.Repeat("#", max(level, 1)), t.Title)
	}
	if len(t.Columns) > 0 {
		b.WriteString("| " + strings.Join(escapeCells(t.Columns), " | ") + " |\n")
		b.WriteString("|" + strings.Repeat(" --- |", len(t.Columns)) + "\n")
		for _, r := range t.Rows {
			b.WriteString("| " + strings.Join(escapeCells(r), " | ") + " |\n")
		}
		if len(t.Notes) > 0 {
			b.WriteString("\n")
		}
	}
	for _, n := range t.Notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func escapeCells(cells []string) []string {
	out := make([]string, len(cells))
	for i, c := range cells {
		if c == "" {
			c = " "
		}
		out[i] = strings.ReplaceAll(c, "|", `\|`)
	}
	return out
}

// na is how a missing figure reads.
const na = "n/a"

// fmtSeconds writes a latency with the precision a reader needs: 4.2ms,
// 42ms, 1.23s.
func fmtSeconds(f Figure) string {
	if !f.Valid() {
		return na
	}
	s := float64(f)
	switch ms := s * 1000; {
	case ms < 10:
		return fmt.Sprintf("%.1fms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.0fms", ms)
	case s < 100:
		return fmt.Sprintf("%.2fs", s)
	default:
		return fmt.Sprintf("%.0fs", s)
	}
}

// fmtPercent writes a share as a percentage with one decimal.
func fmtPercent(f Figure) string {
	if !f.Valid() {
		return na
	}
	return fmt.Sprintf("%.1f%%", float64(f)*100)
}

// fmtUSD writes dollars: cents for sums a budget is made of, more digits
// for the fractions of a cent a short run costs.
func fmtUSD(f Figure) string {
	if !f.Valid() {
		return na
	}
	v := float64(f)
	sign := ""
	if v < 0 {
		sign, v = "-", -v
	}
	switch {
	case v == 0:
		return "$0"
	case v < 0.01:
		return fmt.Sprintf("%s$%.6f", sign, v)
	case v < 1000:
		return fmt.Sprintf("%s$%.2f", sign, v)
	default:
		return sign + "$" + thousands(int64(math.Round(v)))
	}
}

// fmtCount writes a count rounded to a whole number: Prometheus's
// increase() extrapolates counts to fractions that mean nothing to a reader.
func fmtCount(f Figure) string {
	if !f.Valid() {
		return na
	}
	return thousands(int64(math.Round(float64(f))))
}

// fmtTokens writes a token count in the units a budget uses: 950, 12.3k,
// 4.56M, 1.2B.
func fmtTokens(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e9:
		return fmt.Sprintf("%.3gB", v/1e9)
	case a >= 1e6:
		return fmt.Sprintf("%.3gM", v/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.3gk", v/1e3)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

func thousands(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// fmtSavings writes monthly savings with their share of the reference.
func fmtSavings(usd, share Figure) string {
	if !usd.Valid() {
		return na
	}
	if !share.Valid() {
		return fmtUSD(usd)
	}
	return fmt.Sprintf("%s (%s)", fmtUSD(usd), fmtPercent(share))
}
