// Package bench is Relaygate's benchmark suite: it starts the offline
// upstream simulator, the gateway (with and without its Redis cache), a
// stock httputil.ReverseProxy and nginx as child processes on loopback,
// drives them with the same load, interleaved round by round so that drift
// of a shared machine falls on all of them alike, and reports what the
// gateway adds over the simulator answering directly, against the targets
// of issue 6.
//
// It is `make bench`, not part of `make test`: its numbers depend on the
// machine. The smoke test in this package runs it at tiny rates to prove
// every subject answers and the report is produced.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Config sets what the suite runs. DefaultConfig is the full run of
// `make bench`; the smoke test shrinks it.
type Config struct {
	// BinDir holds gateway and upstream-sim (`make build` puts them in bin/).
	BinDir string
	// OutDir receives report.json, report.txt, latency.png and, with
	// Profile, the gateway's CPU profile.
	OutDir string
	// WorkDir holds the children's configs and logs; a temporary directory,
	// removed afterwards, when empty.
	WorkDir string
	// Nginx is the nginx binary; empty finds it. NoNginx leaves nginx out
	// (targets relative to it are then not measured).
	Nginx   string
	NoNginx bool

	// Rounds is how many times each subject runs each scenario, interleaved
	// with the others; Duration is one run; Warmup an unmeasured run before
	// the first round.
	Rounds   int
	Duration time.Duration
	Warmup   time.Duration

	// Rates are the open-loop rates of non-streamed completions, in
	// requests per second. KeyRate is the rate the latency targets are
	// judged at (2,000 in issue 6); the cache and fallback scenarios run at
	// it too. It is added to Rates when missing.
	Rates   []int
	KeyRate int
	// Workers is the closed-loop (saturation) concurrency.
	Workers int

	// Tokens is the length of every answer; StreamRate the streams opened
	// per second; ChunkDelay the simulator's pause between stream chunks.
	Tokens     int
	StreamRate int
	ChunkDelay time.Duration
	// IdleStreams is how many open, silent streams the memory scenario
	// holds; IdleBatches how many steps it opens them in (the resident
	// set is read after each, which gives the cost per stream).
	IdleStreams int
	IdleBatches int

	// Profile records the gateway's CPU with perf during one extra
	// saturation run (when perf is installed).
	Profile bool
	// Scenarios, when set, runs only the named ones (ScenarioNames:
	// streams is chat's, streams-messages and streams-responses the other
	// stream APIs').
	Scenarios []string
}

// DefaultConfig is `make bench`: about six minutes on two cores.
func DefaultConfig() Config {
	return Config{
		BinDir:      "bin",
		OutDir:      ".bench",
		Rounds:      3,
		Duration:    4 * time.Second,
		Warmup:      time.Second,
		Rates:       []int{500, 2000},
		KeyRate:     2000,
		Workers:     64,
		Tokens:      16,
		StreamRate:  200,
		ChunkDelay:  5 * time.Millisecond,
		IdleStreams: 10000,
		IdleBatches: 4,
		Profile:     true,
	}
}

// ScenarioNames lists the scenarios in the order they run.
var ScenarioNames = []string{"completions", "saturation", "streams", "streams-messages", "streams-responses", "cache", "fallback", "idle"}

func (c *Config) validate() error {
	var errs []error
	if c.Rounds < 1 {
		errs = append(errs, errors.New("rounds must be at least 1"))
	}
	if c.Duration <= 0 {
		errs = append(errs, errors.New("duration must be positive"))
	}
	if c.KeyRate < 1 || c.StreamRate < 1 || c.Workers < 1 || c.Tokens < 1 {
		errs = append(errs, errors.New("key rate, stream rate, workers and tokens must be at least 1"))
	}
	for _, r := range c.Rates {
		if r < 1 {
			errs = append(errs, fmt.Errorf("rate %d must be at least 1", r))
		}
	}
	if c.ChunkDelay <= 0 {
		errs = append(errs, errors.New("chunk delay must be positive (held-back chunks are judged against it)"))
	}
	if c.IdleStreams < 1 || c.IdleBatches < 1 || c.IdleBatches > c.IdleStreams {
		errs = append(errs, errors.New("idle streams and batches must be at least 1, with no more batches than streams"))
	}
	for _, s := range c.Scenarios {
		if !slices.Contains(ScenarioNames, s) {
			errs = append(errs, fmt.Errorf("unknown scenario %q (have %s)", s, strings.Join(ScenarioNames, ", ")))
		}
	}
	if !slices.Contains(c.Rates, c.KeyRate) {
		c.Rates = append(c.Rates, c.KeyRate)
		slices.Sort(c.Rates)
	}
	return errors.Join(errs...)
}

func (c *Config) wants(scenario string) bool {
	return len(c.Scenarios) == 0 || slices.Contains(c.Scenarios, scenario)
}

// Run starts every subject, runs the scenarios, stops everything (also
// when ctx is cancelled, e.g. by Ctrl-C) and writes the report files to
// cfg.OutDir. Progress goes to progress as it runs.
func Run(ctx context.Context, cfg Config, progress io.Writer) (*Report, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("bench config: %w", err)
	}
	// Children run in the work directory, so every path they get is made
	// absolute first.
	for _, p := range []*string{&cfg.BinDir, &cfg.OutDir} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, err
		}
		*p = abs
	}
	if err := checkBinaries(cfg.BinDir); err != nil {
		return nil, err
	}
	redis, err := lookBinary("redis-server", "scripts/install-tools.sh installs it")
	if err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now(), Settings: settingsOf(cfg)}
	var notes []string
	nginx := ""
	if !cfg.NoNginx {
		if nginx, err = findNginx(cfg.Nginx); err != nil {
			notes = append(notes, err.Error()+": nginx left out, targets relative to it not measured")
			nginx = ""
		} else if v, _, err := nginxBuild(nginx); err == nil {
			rep.Machine.Nginx = v
		}
	}
	nofile, err := nofileLimit()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	workDir := cfg.WorkDir
	if workDir == "" {
		if workDir, err = os.MkdirTemp("", "relaybench-"); err != nil {
			return nil, fmt.Errorf("work directory: %w", err)
		}
		defer os.RemoveAll(workDir)
	} else if err := os.MkdirAll(workDir, 0o700); err != nil {
		return nil, fmt.Errorf("work directory: %w", err)
	}
	if workDir, err = filepath.Abs(workDir); err != nil {
		return nil, err
	}

	rep.Machine.CPUs = runtime.NumCPU()
	rep.Machine.GoVersion = runtime.Version()
	rep.Machine.Kernel = kernelRelease()
	rep.Machine.NoFileLimit = nofile
	rep.Machine.LoadStart = loadAvg()
	cpu0, _ := readMachineCPU()

	fmt.Fprintf(progress, "relaybench: starting simulators, redis, gateways, go-proxy%s on loopback\n",
		map[bool]string{true: ", nginx", false: ""}[nginx != ""])
	st, err := startStack(ctx, stackOptions{
		binDir: cfg.BinDir, workDir: workDir, nginx: nginx, redis: redis,
		chunkDelay: cfg.ChunkDelay, tokens: cfg.Tokens, nofile: nofile,
	})
	if err != nil {
		return nil, err
	}
	defer st.close()

	s := &suite{cfg: cfg, st: st, progress: progress, nofile: nofile, outDir: cfg.OutDir}
	scenarios := s.scenarios()
	s.plan(scenarios)
	fmt.Fprintf(progress, "relaybench: %d scenarios, %d rounds of %s each, about %s; machine: %d CPUs, load %.2f %.2f %.2f\n",
		len(scenarios), cfg.Rounds, cfg.Duration, s.planned.Round(10*time.Second), rep.Machine.CPUs,
		rep.Machine.LoadStart[0], rep.Machine.LoadStart[1], rep.Machine.LoadStart[2])
	s.started = time.Now()
	for i := 0; i < len(scenarios); {
		j := i + 1
		for j < len(scenarios) && scenarios[i].group != "" && scenarios[j].group == scenarios[i].group {
			j++
		}
		res, err := s.runGroup(ctx, scenarios[i:j])
		if err != nil {
			return nil, err
		}
		rep.Scenarios = append(rep.Scenarios, res...)
		i = j
	}
	rep.Profile = s.profile
	notes = append(notes, s.notes...)

	cpu1, _ := readMachineCPU()
	rep.Machine.LoadEnd = loadAvg()
	rep.Machine.BusyPercent = busyPercent(cpu0, cpu1)
	rep.Seconds = time.Since(rep.Started).Seconds()
	rep.Targets = evaluate(rep, cfg)
	rep.StreamAPIs = compareStreamAPIs(rep)
	rep.Notes = notes
	if err := rep.write(cfg.OutDir); err != nil {
		return rep, err
	}
	return rep, nil
}

// Settings records the configuration of a run in the report.
type Settings struct {
	Rounds        int      `json:"rounds"`
	RunSeconds    float64  `json:"run_seconds"`
	WarmupSeconds float64  `json:"warmup_seconds"`
	Rates         []int    `json:"rates_rps"`
	KeyRate       int      `json:"key_rate_rps"`
	Workers       int      `json:"workers"`
	Tokens        int      `json:"tokens"`
	StreamRate    int      `json:"stream_rate"`
	ChunkDelayMS  float64  `json:"chunk_delay_ms"`
	IdleStreams   int      `json:"idle_streams"`
	Scenarios     []string `json:"scenarios,omitempty"`
}

func settingsOf(c Config) Settings {
	return Settings{
		Rounds: c.Rounds, RunSeconds: c.Duration.Seconds(), WarmupSeconds: c.Warmup.Seconds(),
		Rates: c.Rates, KeyRate: c.KeyRate, Workers: c.Workers, Tokens: c.Tokens, StreamRate: c.StreamRate,
		ChunkDelayMS: float64(c.ChunkDelay) / 1e6, IdleStreams: c.IdleStreams, Scenarios: c.Scenarios,
	}
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return runtime.GOOS
	}
	return strings.TrimSpace(string(b))
}

// write saves report.json, report.txt and latency.png in dir.
func (r *Report) write(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("report JSON: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("report JSON: %w", err)
	}
	var txt strings.Builder
	r.WriteText(&txt)
	if err := os.WriteFile(filepath.Join(dir, "report.txt"), []byte(txt.String()), 0o644); err != nil {
		return fmt.Errorf("report text: %w", err)
	}
	if err := r.chart(filepath.Join(dir, "latency.png")); err != nil {
		return fmt.Errorf("latency chart: %w", err)
	}
	return nil
}
