package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/relaygate/relaygate/service/internal/migration"
)

// progressPrinter shows a comparison's progress on stderr: one line
// rewritten in place on a terminal, a line per tenth of the run otherwise
// (a CI log should not get a line per request). Compare calls it from one
// goroutine at a time.
type progressPrinter struct {
	w        io.Writer
	terminal bool
	last     time.Time
	lastStep int
}

func newProgressPrinter(w io.Writer) *progressPrinter {
	p := &progressPrinter{w: w, lastStep: -1}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.terminal = true
		}
	}
	return p
}

func (p *progressPrinter) print(pr migration.Progress) {
	final := pr.Done == pr.Total
	if p.terminal {
		if !final && time.Since(p.last) < 100*time.Millisecond {
			return
		}
		p.last = time.Now()
		fmt.Fprintf(p.w, "\r\033[K%s", progressLine(pr))
		if final {
			fmt.Fprintln(p.w)
		}
		return
	}
	step := pr.Done * 10 / max(pr.Total, 1)
	if step == p.lastStep {
		return
	}
	p.lastStep = step
	fmt.Fprintln(p.w, progressLine(pr))
}

func progressLine(pr migration.Progress) string {
	parts := []string{fmt.Sprintf("compare: %d/%d requests", pr.Done, pr.Total)}
	for _, u := range pr.Upstreams {
		parts = append(parts, fmt.Sprintf("%s %d (%d failed)", u.Name, u.Done, u.Failed))
	}
	return strings.Join(parts, " · ")
}
