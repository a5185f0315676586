package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"
)

// Profile is where the gateway's CPU time goes at saturation, from perf
// sampling the real binary (the gateway serves no pprof).
type Profile struct {
	Subject string  `json:"subject"`
	Seconds float64 `json:"seconds"`
	RPS     float64 `json:"rps"`
	// Self is the top functions by their own time; Cumulative by time in
	// them and what they call; Gateway the cumulative lines of the
	// gateway's own code and the libraries its features use (logging,
	// JSON, metrics, Redis), where tuning starts.
	Self       []ProfileLine `json:"self"`
	Cumulative []ProfileLine `json:"cumulative"`
	Gateway    []ProfileLine `json:"gateway"`
	// Files are the perf data and full reports, in the output directory.
	Files []string `json:"files"`
}

// ProfileLine is one function's share of the sampled CPU time.
type ProfileLine struct {
	Percent float64 `json:"percent"`
	Self    float64 `json:"self_percent,omitempty"`
	Symbol  string  `json:"symbol"`
}

// profileTop is how many functions the report lists.
const profileTop = 15

// perfFrequency samples at 999 Hz: fine enough for a few seconds' run,
// light enough not to change what it measures much.
const perfFrequency = "999"

// profileGateway runs one more closed-loop round against the gateway with
// perf attached; its numbers are not part of the scenario's results.
func (s *suite) profileGateway(ctx context.Context, sc scenario) error {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return errors.New("perf is not installed (apt-get install linux-perf)")
	}
	var e *entry
	for i := range sc.entries {
		if sc.entries[i].subject.name == subjectGateway {
			e = &sc.entries[i]
		}
	}
	if e == nil {
		return errors.New("no gateway in the scenario")
	}
	data := filepath.Join(s.outDir, "gateway.perf.data")
	var stderr bytes.Buffer
	rec := exec.CommandContext(ctx, perf, "record", "-e", "cpu-clock", "-F", perfFrequency, "-g",
		"-p", strconv.Itoa(e.subject.pids(e.role)[0]), "-o", data)
	rec.Stderr = &stderr
	rec.Cancel = func() error { return rec.Process.Signal(syscall.SIGINT) }
	rec.WaitDelay = 10 * time.Second
	if err := rec.Start(); err != nil {
		return fmt.Errorf("perf record: %w", err)
	}
	r, runErr := s.once(ctx, sc, *e, s.cfg.Duration)
	// perf writes its data file when interrupted.
	_ = rec.Process.Signal(syscall.SIGINT)
	if err := rec.Wait(); err != nil && !isInterrupt(err) {
		return fmt.Errorf("perf record: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	if runErr != nil {
		return runErr
	}
	fmt.Fprintf(s.progress, "[%s] profile          gateway under perf: %.0f rps\n", fmtClock(time.Since(s.started)), perSecond(r.ok, r.elapsed))

	p := &Profile{Subject: e.label, Seconds: r.elapsed.Seconds(), RPS: perSecond(r.ok, r.elapsed), Files: []string{data}}
	for _, v := range []struct {
		file     string
		children bool
		into     *[]ProfileLine
	}{
		{"gateway-profile-self.txt", false, &p.Self},
		{"gateway-profile-cumulative.txt", true, &p.Cumulative},
	} {
		mode := "--no-children"
		if v.children {
			mode = "--children"
		}
		out, err := exec.CommandContext(ctx, perf, "report", "-i", data, "--stdio", mode, "--sort", "symbol", "-g", "none").Output()
		if err != nil {
			return fmt.Errorf("perf report: %w", err)
		}
		path := filepath.Join(s.outDir, v.file)
		if err := os.WriteFile(path, out, 0o644); err != nil {
			return fmt.Errorf("profile report: %w", err)
		}
		p.Files = append(p.Files, path)
		*v.into = parsePerfReport(out, v.children, profileTop, nil)
		if v.children {
			p.Gateway = parsePerfReport(out, true, profileTop, gatewayCode)
		}
	}
	s.profile = p
	return nil
}

func isInterrupt(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && (ws.Signaled() && ws.Signal() == syscall.SIGINT || ws.ExitStatus() == 130 || ws.ExitStatus() == 0)
}

// perfLine matches a `perf report --stdio --sort symbol` row: one or two
// percentages, the [k]ernel or [.] user marker, the symbol, and columns
// perf may add after it.
var perfLine = regexp.MustCompile(`^\s*([\d.]+)%\s+(?:([\d.]+)%\s+)?\[(.)\]\s+(\S.*?)\s*(?:\s-\s.*)?$`)

// gatewayCode picks the profile lines of the gateway's code and of the
// libraries behind its features.
var gatewayCode = regexp.MustCompile(`relaygate/|log/slog|gjson|prometheus|go-redis|encoding/json`)

// parsePerfReport reads the first n rows of a perf report whose symbol
// matches only (all rows when only is nil).
func parsePerfReport(out []byte, children bool, n int, only *regexp.Regexp) []ProfileLine {
	var lines []ProfileLine
	for line := range bytes.SplitSeq(out, []byte("\n")) {
		if len(lines) == n {
			break
		}
		m := perfLine.FindSubmatch(line)
		if m == nil {
			continue
		}
		if only != nil && !only.Match(m[4]) {
			continue
		}
		pct, _ := strconv.ParseFloat(string(m[1]), 64)
		l := ProfileLine{Percent: pct, Symbol: string(m[4])}
		if children && len(m[2]) > 0 {
			l.Self, _ = strconv.ParseFloat(string(m[2]), 64)
		}
		if string(m[3]) == "k" {
			l.Symbol = "[kernel] " + l.Symbol
		}
		lines = append(lines, l)
	}
	return lines
}
