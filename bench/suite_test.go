package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMain lets the suite start this test binary as its floor proxy, as
// relaybench starts itself.
func TestMain(m *testing.M) {
	RunChildIfAsked()
	os.Exit(m.Run())
}

// TestSuiteSmoke runs every scenario at tiny rates against real children
// (simulators, redis-server, both gateways, the floor proxy, nginx when
// installed) and checks that every subject answered without errors and the
// report files were produced. It asserts nothing about speed: that is what
// `make bench` reports, on a machine quiet enough to mean something.
func TestSuiteSmoke(t *testing.T) {
	bin := buildBinaries(t)
	out := t.TempDir()
	cfg := Config{
		BinDir: bin, OutDir: out, WorkDir: t.TempDir(),
		Rounds: 1, Duration: 250 * time.Millisecond,
		Rates: []int{50}, KeyRate: 50, Workers: 2,
		Tokens: 4, StreamRate: 20, ChunkDelay: 2 * time.Millisecond,
		IdleStreams: 20, IdleBatches: 2,
	}
	_, nginxErr := findNginx("")
	hasNginx := nginxErr == nil
	if !hasNginx {
		t.Logf("nginx not installed (%v): its rows and targets are left out", nginxErr)
	}

	// A failure guard for a wedged child, far above the few seconds the
	// run takes.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg, testLog{t})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}

	subjects := []string{subjectDirect, subjectGateway, subjectGatewayCache, subjectGoProxy}
	if hasNginx {
		subjects = append(subjects, subjectNginx)
	}
	wantScenarios := []string{"completions@50", "saturation", "streams", "streams-messages", "streams-responses", "cache", "fallback", "idle"}
	var got []string
	for _, sc := range rep.Scenarios {
		got = append(got, sc.Name)
		for _, row := range sc.Rows {
			if row.Requests == 0 || row.Errors > 0 {
				t.Errorf("%s / %s: %d answered, %d errors (first: %s)", sc.Name, row.Label, row.Requests, row.Errors, row.FirstError)
			}
		}
		if sc.Name == "completions@50" || sc.Name == "saturation" || sc.Name == "streams" {
			if labels := rowLabels(sc); !slices.Equal(labels, subjects) {
				t.Errorf("%s rows = %v, want %v", sc.Name, labels, subjects)
			}
		}
	}
	if !slices.Equal(got, wantScenarios) {
		t.Errorf("scenarios = %v, want %v", got, wantScenarios)
	}
	for _, sc := range rep.Scenarios {
		for _, row := range sc.Rows {
			switch {
			case sc.Name == "cache" && row.Label == subjectGatewayCache && row.CacheHits == 0:
				t.Errorf("cache scenario: the cached gateway served no hits (X-Cache: HIT) after priming")
			case sc.Kind == string(kindStreams) && (row.TTFB == nil || row.TTFT == nil):
				t.Errorf("%s / %s: no time to first byte or first content event", sc.Name, row.Label)
			case sc.Name == "idle" && (row.Idle == nil || row.Idle.Held != cfg.IdleStreams || len(row.Idle.Points) != cfg.IdleBatches+1):
				t.Errorf("idle / %s: %+v, want %d streams held in %d batches", row.Label, row.Idle, cfg.IdleStreams, cfg.IdleBatches)
			case sc.Name == "completions@50" && row.Subject == subjectGateway && row.Overhead == nil:
				t.Errorf("completions@50 / gateway: relaygate_overhead_seconds not scraped")
			}
		}
	}

	// The stream APIs are compared with chat's; at these rates the verdict
	// is noise, so only that each was measured is checked.
	if len(rep.StreamAPIs) != 3 {
		t.Errorf("%d stream API comparisons, want 3 (chat, messages, responses)", len(rep.StreamAPIs))
	}
	for _, c := range rep.StreamAPIs {
		if c.Streams == 0 || math.IsNaN(float64(c.TTFTP50Vs)) {
			t.Errorf("stream API %s: %d streams, TTFT ratio %v (%s)", c.API, c.Streams, c.TTFTP50Vs, c.Note)
		}
	}

	for _, tg := range rep.Targets {
		switch tg.Verdict {
		case Met, NotMet:
		case NotMeasured:
			if hasNginx || !strings.Contains(tg.Note, "nginx") {
				t.Errorf("target %q (%s) not measured: %s", tg.Name, tg.Subject, tg.Note)
			}
		default:
			t.Errorf("target %q: verdict %q", tg.Name, tg.Verdict)
		}
	}
	if len(rep.Targets) != 14 {
		t.Errorf("%d targets judged, want 14 (6 per gateway, idle memory, cache hits)", len(rep.Targets))
	}

	checkFiles(t, out)
}

func checkFiles(t *testing.T, out string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatalf("report.json: %v", err)
	}
	var back struct {
		Scenarios []json.RawMessage `json:"scenarios"`
		Targets   []json.RawMessage `json:"targets"`
	}
	if err := json.Unmarshal(b, &back); err != nil || len(back.Scenarios) == 0 || len(back.Targets) == 0 {
		t.Errorf("report.json does not hold scenarios and targets (%v): %.300s", err, b)
	}
	txt, err := os.ReadFile(filepath.Join(out, "report.txt"))
	if err != nil || !bytes.Contains(txt, []byte("== targets")) {
		t.Errorf("report.txt without the targets table (%v)", err)
	}
	png, err := os.ReadFile(filepath.Join(out, "latency.png"))
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("latency.png is not a PNG (%v)", err)
	}
}

func rowLabels(sc ScenarioResult) []string {
	var out []string
	for _, r := range sc.Rows {
		out = append(out, r.Label)
	}
	return out
}

// buildBinaries builds the gateway and the simulator from this checkout, so
// the smoke test never runs stale binaries from bin/.
func buildBinaries(t *testing.T) string {
	t.Helper()
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("find the module root: %v", err)
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "./service/cmd/gateway", "./service/cmd/upstream-sim")
	cmd.Dir = strings.TrimSpace(string(root))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// testLog writes the suite's progress lines to the test log as they come, so
// a wedged run shows how far it got.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
