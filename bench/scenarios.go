package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"time"
)

// entry is one row of a scenario: a subject asked for one simulator role.
type entry struct {
	label   string
	subject *subject
	role    role
	// bodies, when set, replace the scenario's: the fallback scenario's
	// baseline rows ask for the healthy route's model, not the failing one.
	bodies [][]byte
}

// bodiesFor is what entry e sends in scenario sc.
func (sc scenario) bodiesFor(e entry) [][]byte {
	if e.bodies != nil {
		return e.bodies
	}
	return sc.bodies
}

type scenarioKind string

const (
	kindOpen    scenarioKind = "open loop"
	kindClosed  scenarioKind = "closed loop"
	kindStreams scenarioKind = "streams"
	kindIdle    scenarioKind = "idle streams"
)

type scenario struct {
	name, title string
	kind        scenarioKind
	rate        int // open loop and streams: per second
	workers     int // closed loop
	entries     []entry
	bodies      [][]byte
	// overhead scrapes the gateways' relaygate_overhead_seconds around
	// each run.
	overhead bool
	// profile runs one extra, unreported saturation run of the gateway
	// under perf.
	profile bool
	// prime sends every body once before the warm-up (fills the cache).
	prime bool
	// api is a streams scenario's API (chat when nil); the APIs' scenarios
	// differ in nothing else, so their added latencies compare.
	api *streamAPI
	// group, when set, interleaves the rounds of the consecutive scenarios
	// that share it (runGroup), as entries are within a scenario.
	group string
}

// streamAPI is the scenario's stream API.
func (sc scenario) streamAPI() *streamAPI {
	if sc.api == nil {
		return apiChat
	}
	return sc.api
}

// suite runs scenarios against one stack.
type suite struct {
	cfg      Config
	st       *stack
	progress io.Writer
	nofile   uint64
	outDir   string

	started time.Time
	planned time.Duration
	profile *Profile
	notes   []string
}

// The request bodies: a short system prompt and a question, as a chat
// client sends them. Cacheable bodies set temperature 0, the gateway's
// rule for deterministic (cacheable) requests; there are several so the
// cache holds more than one key.
const (
	messages        = `"messages":[{"role":"system","content":"You are a concise assistant for an operations team."},{"role":"user","content":"Summarise in two sentences why a gateway in front of model APIs helps with cost, latency and outages."}]`
	cacheableBodies = 32
)

func completionBody(r role, tokens int) []byte {
	return []byte(`{"model":"` + r.model() + `",` + messages + `,"max_tokens":` + strconv.Itoa(tokens) + `}`)
}

func cacheableBody(i, tokens int) []byte {
	return []byte(`{"model":"` + roleFast.model() + `","temperature":0,"max_tokens":` + strconv.Itoa(tokens) +
		`,"messages":[{"role":"user","content":"Cacheable question number ` + strconv.Itoa(i) + `: what does a response cache save?"}]}`)
}

func streamBody(r role, tokens int) []byte {
	return []byte(`{"model":"` + r.model() + `","stream":true,"stream_options":{"include_usage":true},` + messages +
		`,"max_tokens":` + strconv.Itoa(tokens) + `}`)
}

// scenarios builds the scenarios the config asks for, each with the
// subjects it compares.
func (s *suite) scenarios() []scenario {
	cfg := s.cfg
	rows := func(r role, names ...string) []entry {
		var out []entry
		for _, n := range names {
			if sub, ok := s.st.subjects[n]; ok {
				out = append(out, entry{label: n, subject: sub, role: r})
			}
		}
		return out
	}
	all := []string{subjectDirect, subjectGateway, subjectGatewayCache, subjectGoProxy, subjectNginx}
	var out []scenario
	if cfg.wants("completions") {
		for _, rate := range cfg.Rates {
			out = append(out, scenario{
				name:  fmt.Sprintf("completions@%d", rate),
				title: fmt.Sprintf("non-streamed completions, open loop at %d rps", rate),
				kind:  kindOpen, rate: rate, entries: rows(roleFast, all...),
				bodies:   [][]byte{completionBody(roleFast, cfg.Tokens)},
				overhead: true,
			})
		}
	}
	if cfg.wants("saturation") {
		out = append(out, scenario{
			name:  "saturation",
			title: fmt.Sprintf("non-streamed completions, closed loop with %d clients", cfg.Workers),
			kind:  kindClosed, workers: cfg.Workers, entries: rows(roleFast, all...),
			bodies:  [][]byte{completionBody(roleFast, cfg.Tokens)},
			profile: cfg.Profile,
		})
	}
	if cfg.wants("streams") {
		out = append(out, scenario{
			name: "streams",
			title: fmt.Sprintf("streams of %d chunks %s apart, open loop at %d streams/s",
				cfg.Tokens, cfg.ChunkDelay, cfg.StreamRate),
			kind: kindStreams, rate: cfg.StreamRate, entries: rows(roleStream, all...),
			bodies: [][]byte{streamBody(roleStream, cfg.Tokens)}, group: "streams",
		})
	}
	// The other stream APIs, from the same simulator at the same rate and
	// in rounds interleaved with chat's, so their added latency and TTFT
	// compare with chat's (issue 12). The cached gateway is left out:
	// streams are never cached.
	for _, api := range []*streamAPI{apiMessages, apiResponses} {
		name := "streams-" + api.name
		if !cfg.wants(name) {
			continue
		}
		out = append(out, scenario{
			name: name,
			title: fmt.Sprintf("%s streams (POST %s) of %d chunks %s apart, open loop at %d streams/s",
				api.name, api.path, cfg.Tokens, cfg.ChunkDelay, cfg.StreamRate),
			kind: kindStreams, rate: cfg.StreamRate, api: api,
			entries: rows(roleStream, subjectDirect, subjectGateway, subjectGoProxy, subjectNginx),
			bodies:  [][]byte{api.body(roleStream, cfg.Tokens)}, group: "streams",
		})
	}
	if cfg.wants("cache") {
		var bodies [][]byte
		for i := range cacheableBodies {
			bodies = append(bodies, cacheableBody(i, cfg.Tokens))
		}
		out = append(out, scenario{
			name:  "cache",
			title: fmt.Sprintf("cacheable completions (temperature 0, %d keys), open loop at %d rps", cacheableBodies, cfg.KeyRate),
			kind:  kindOpen, rate: cfg.KeyRate, bodies: bodies, prime: true,
			entries: rows(roleFast, subjectDirect, subjectGateway, subjectGatewayCache),
		})
	}
	if cfg.wants("fallback") {
		entries := rows(roleFast, subjectDirect, subjectGateway)
		if gw, ok := s.st.subjects[subjectGateway]; ok {
			entries = append(entries, entry{label: "gateway fallback", subject: gw, role: roleFallback,
				bodies: [][]byte{completionBody(roleFallback, cfg.Tokens)}})
		}
		out = append(out, scenario{
			name:  "fallback",
			title: fmt.Sprintf("first upstream answers 503, second is healthy; open loop at %d rps", cfg.KeyRate),
			kind:  kindOpen, rate: cfg.KeyRate, entries: entries,
			bodies: [][]byte{completionBody(roleFast, cfg.Tokens)},
		})
	}
	if cfg.wants("idle") {
		out = append(out, scenario{
			name:    "idle",
			title:   fmt.Sprintf("%d concurrent open streams waiting on their upstream", cfg.IdleStreams),
			kind:    kindIdle,
			entries: rows(roleIdle, subjectDirect, subjectGateway, subjectGoProxy, subjectNginx),
			bodies:  [][]byte{streamBody(roleIdle, 1)},
		})
	}
	return out
}

// plan estimates the run time, for the progress lines.
func (s *suite) plan(scs []scenario) {
	for _, sc := range scs {
		per := s.cfg.Warmup + time.Duration(s.cfg.Rounds)*s.cfg.Duration
		if sc.kind == kindIdle {
			// Opening streams runs at a few thousand per second here.
			per = time.Duration(s.cfg.IdleStreams) * time.Second / 2000
		}
		s.planned += per * time.Duration(len(sc.entries))
		if sc.profile {
			s.planned += s.cfg.Duration
		}
	}
}

// measured is what the rounds of one scenario have measured so far.
type measured struct {
	sc       scenario
	rounds   int
	runs     []run
	cpu      []time.Duration
	overhead []histogram
}

// runGroup runs scenarios that share a group (one alone when it has none):
// a warm-up of every entry, then Rounds rounds in which every entry of
// every scenario runs once, in the same order (A B C A' B' C' A B C …), so
// drift falls on the group's scenarios alike and they compare.
func (s *suite) runGroup(ctx context.Context, scs []scenario) (_ []ScenarioResult, err error) {
	current := scs[0].name
	defer func() {
		if err != nil {
			err = fmt.Errorf("scenario %s: %w", current, err)
		}
	}()
	ms := make([]*measured, len(scs))
	rounds := 0
	for k, sc := range scs {
		m := &measured{sc: sc, rounds: s.cfg.Rounds, runs: make([]run, len(sc.entries)),
			cpu: make([]time.Duration, len(sc.entries)), overhead: make([]histogram, len(sc.entries))}
		ms[k], current = m, sc.name
		if sc.prime {
			for _, e := range sc.entries {
				if err := prime(ctx, e, sc.bodiesFor(e)); err != nil {
					return nil, err
				}
			}
		}
		if sc.kind == kindIdle {
			m.rounds = 1
		} else if s.cfg.Warmup > 0 {
			for _, e := range sc.entries {
				if _, err := s.once(ctx, sc, e, s.cfg.Warmup); err != nil {
					return nil, err
				}
				if err := s.checkpoint(ctx); err != nil {
					return nil, err
				}
			}
		}
		rounds = max(rounds, m.rounds)
	}
	for round := 1; round <= rounds; round++ {
		for _, m := range ms {
			if round > m.rounds {
				continue
			}
			current = m.sc.name
			for i := range m.sc.entries {
				if err := s.measure(ctx, m, i, round); err != nil {
					return nil, err
				}
			}
		}
	}
	var out []ScenarioResult
	for _, m := range ms {
		current = m.sc.name
		if m.sc.profile {
			if err := s.profileGateway(ctx, m.sc); err != nil {
				s.notes = append(s.notes, "CPU profile not taken: "+err.Error())
			}
		}
		out = append(out, s.result(m.sc, m.runs, m.cpu, m.overhead))
	}
	return out, nil
}

// measure runs entry i of m's scenario once, for Duration, and adds it to
// m: the load, the subject's CPU time and, where asked, its overhead.
func (s *suite) measure(ctx context.Context, m *measured, i, round int) error {
	sc, e := m.sc, m.sc.entries[i]
	var before histogram
	var err error
	if sc.overhead && e.subject.metricsURL != "" {
		if before, err = scrapeHistogram(ctx, metricsClient, e.subject.metricsURL, overheadMetric); err != nil {
			return err
		}
	}
	cpu0, cpuErr := cpuTimes(e.subject.pids(e.role))
	r, err := s.once(ctx, sc, e, s.cfg.Duration)
	if err != nil {
		return err
	}
	if cpu1, err := cpuTimes(e.subject.pids(e.role)); err == nil && cpuErr == nil {
		m.cpu[i] += cpu1 - cpu0
	}
	if sc.overhead && e.subject.metricsURL != "" {
		after, err := scrapeHistogram(ctx, metricsClient, e.subject.metricsURL, overheadMetric)
		if err != nil {
			return err
		}
		window, err := after.minus(before)
		if err != nil {
			return err
		}
		m.overhead[i] = m.overhead[i].plus(window)
	}
	m.runs[i].add(r)
	s.report(sc, round, m.rounds, e, r)
	return s.checkpoint(ctx)
}

// checkpoint stops the scenario when the user asked to or a child died.
func (s *suite) checkpoint(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.st.alive()
}

// once runs one entry of a scenario for d.
func (s *suite) once(ctx context.Context, sc scenario, e entry, d time.Duration) (run, error) {
	switch sc.kind {
	case kindOpen:
		return attack(ctx, e, load{rate: sc.rate, duration: d, bodies: sc.bodiesFor(e)}), nil
	case kindClosed:
		return attack(ctx, e, load{workers: sc.workers, duration: d, bodies: sc.bodiesFor(e)}), nil
	case kindStreams:
		shape := streamShape{tokens: s.cfg.Tokens, chunkDelay: s.cfg.ChunkDelay}
		return runStreams(ctx, e, sc.streamAPI(), sc.bodiesFor(e)[0], shape, sc.rate, d), nil
	case kindIdle:
		// Connections kept from earlier scenarios would count against the
		// open-files limit the streams are sized by.
		for _, sub := range s.st.subjects {
			sub.client.CloseIdleConnections()
		}
		n, limit, err := s.idleCapacity(e)
		if err != nil {
			return run{}, err
		}
		r, err := holdIdleStreams(ctx, e, sc.bodiesFor(e)[0], s.cfg.IdleStreams, n, s.cfg.IdleBatches)
		if r.idle != nil {
			r.idle.Limit = limit
		}
		return r, err
	}
	return run{}, fmt.Errorf("unknown scenario kind %q", sc.kind)
}

// idleMargin is the descriptors left free in every process for what the
// run itself opens besides the streams (a log file, a probe, Redis).
const idleMargin = 64

// idleCapacity is how many idle streams the entry can hold at once under
// the open-files limit, counting what each process already has open:
// the load generator and the simulator hold one descriptor per stream, a
// proxy two. limit says what capped it, when something did.
func (s *suite) idleCapacity(e entry) (n int, limit string, err error) {
	n = s.cfg.IdleStreams
	type holder struct {
		name      string
		pid       int
		perStream int
	}
	holders := []holder{{"load generator", os.Getpid(), 1}, {"simulator", s.st.sims[e.role.simulator()].pid(), 1}}
	if e.subject.proxy {
		for _, pid := range e.subject.pids(e.role) {
			holders = append(holders, holder{e.subject.name, pid, 2})
		}
	}
	for _, h := range holders {
		used, err := openFiles(h.pid)
		if err != nil {
			return 0, "", err
		}
		if c := streamCapacity(s.nofile, used, h.perStream); c < n {
			n = c
			limit = fmt.Sprintf("the open-files limit %d with %d already open in the %s allows %d streams (%d descriptors each); memory at %d extrapolated",
				s.nofile, used, h.name, c, h.perStream, s.cfg.IdleStreams)
		}
	}
	return n, limit, nil
}

// streamCapacity is how many streams of perStream descriptors fit beside
// used ones under nofile, with idleMargin to spare.
func streamCapacity(nofile uint64, used, perStream int) int {
	if nofile > math.MaxInt32 {
		nofile = math.MaxInt32
	}
	return max((int(nofile)-used-idleMargin)/perStream, 1)
}

// report prints one progress line.
func (s *suite) report(sc scenario, round, rounds int, e entry, r run) {
	elapsed := time.Since(s.started)
	pct := 0.0
	if s.planned > 0 {
		pct = min(99, 100*float64(elapsed)/float64(s.planned))
	}
	line := fmt.Sprintf("[%s %3.0f%%] %-16s %d/%d %-16s", fmtClock(elapsed), pct, sc.name, round, rounds, e.label)
	switch {
	case r.idle != nil:
		line += fmt.Sprintf(" %d streams held  RSS %s (+%s/stream)", r.idle.Held,
			fmtMiB(float64(r.maxRSS)), fmtBytes(r.idle.BytesPerStream))
	case sc.kind == kindStreams:
		p := r.ttfb.percentiles()
		line += fmt.Sprintf(" %6.0f streams/s  TTFB p50 %s p99 %s  held back %d", perSecond(r.ok, r.elapsed),
			fmtMicros(p.P50), fmtMicros(p.P99), r.heldBack)
	default:
		p := r.latencies.percentiles()
		line += fmt.Sprintf(" %7.0f rps  p50 %s p99 %s", perSecond(r.ok, r.elapsed), fmtMicros(p.P50), fmtMicros(p.P99))
		if r.cacheHits > 0 {
			line += fmt.Sprintf("  hits %d%%", 100*r.cacheHits/max(r.ok, 1))
		}
	}
	if r.errors > 0 {
		line += fmt.Sprintf("  ERRORS %d (%s)", r.errors, r.firstErr)
	}
	fmt.Fprintln(s.progress, line)
}

func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

func fmtClock(d time.Duration) string {
	d = d.Round(time.Second)
	return fmt.Sprintf("%d:%02d", int(d.Minutes()), int(d.Seconds())%60)
}

// result turns a scenario's runs into its report section, with every row's
// percentiles also given as added over the direct simulator.
func (s *suite) result(sc scenario, runs []run, cpu []time.Duration, overhead []histogram) ScenarioResult {
	res := ScenarioResult{
		Name: sc.name, Title: sc.title, Kind: string(sc.kind), Rate: sc.rate, Workers: sc.workers,
		Rounds: s.cfg.Rounds, RunSeconds: s.cfg.Duration.Seconds(),
	}
	if sc.kind == kindStreams {
		res.API = sc.streamAPI().name
	}
	if sc.kind == kindIdle {
		res.Rounds = 1
		res.RunSeconds = 0
	}
	base := -1
	for i, e := range sc.entries {
		if e.subject.name == subjectDirect {
			base = i
		}
	}
	for i, e := range sc.entries {
		r := runs[i]
		row := Row{
			Label: e.label, Subject: e.subject.name,
			Requests: r.ok, Errors: r.errors, FirstError: r.firstErr,
			RPS: perSecond(r.ok, r.elapsed), MaxRSSBytes: r.maxRSS, Idle: r.idle,
		}
		if r.ok > 0 && cpu[i] > 0 && sc.kind != kindIdle {
			row.CPUPerRequestUS = micros(cpu[i]) / float64(r.ok)
		}
		if sc.kind == kindIdle {
			row.RPS = 0
		} else {
			row.Latency = r.latencies.percentiles()
		}
		if sc.kind == kindStreams {
			ttfb, ttft, gaps := r.ttfb.percentiles(), r.ttft.percentiles(), r.gaps.percentiles()
			row.TTFB, row.TTFT, row.Gap = &ttfb, &ttft, &gaps
			row.HeldBack, row.PacedGaps = r.heldBack, len(r.gaps)
		}
		if r.cacheHits > 0 || sc.name == "cache" {
			row.CacheHits = r.cacheHits
			if r.ok > 0 {
				row.CacheHitRatio = float64(r.cacheHits) / float64(r.ok)
			}
		}
		if overhead[i].total() > 0 {
			p := overhead[i].percentiles()
			row.Overhead = &p
			row.OverheadCount = int64(overhead[i].total())
		}
		if base >= 0 && i != base && sc.kind != kindIdle {
			b := runs[base]
			added := row.Latency.minus(b.latencies.percentiles())
			row.Added = &added
			if sc.kind == kindStreams {
				t := row.TTFB.minus(b.ttfb.percentiles())
				tt := row.TTFT.minus(b.ttft.percentiles())
				g := row.Gap.minus(b.gaps.percentiles())
				row.TTFBAdded, row.TTFTAdded, row.GapAdded = &t, &tt, &g
			}
		}
		res.Rows = append(res.Rows, row)
	}
	return res
}

// metricsClient reads /metrics; the load generator's clients are busy.
var metricsClient = &http.Client{Timeout: 10 * time.Second}
