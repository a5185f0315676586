package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/relaygate/relaygate/smoketest"
)

// TestStartPrometheus runs the project's config for real: Prometheus scrapes
// a stand-in gateway, the test reads the series back, and every rule in
// deploy/prometheus/rules is loaded and evaluates without error.
func TestStartPrometheus(t *testing.T) {
	reg := prometheus.NewRegistry()
	inflight := prometheus.NewGauge(prometheus.GaugeOpts{Name: "relaygate_inflight_requests", Help: "test"})
	inflight.Set(3)
	reg.MustRegister(inflight)
	gw := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(gw.Close)
	target := gw.Listener.Addr().String()

	p := StartPrometheus(t, PrometheusOptions{Targets: []string{target}})
	if !strings.HasPrefix(p.Addr, "127.0.0.1:") || p.URL != "http://"+p.Addr {
		t.Fatalf("Addr %q URL %q, want a 127.0.0.1 address and its http URL", p.Addr, p.URL)
	}
	ctx := t.Context()

	vec, err := p.WaitForSeries(ctx, `relaygate_inflight_requests{job="relaygate"}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(vec) != 1 || vec[0].Value != 3 || string(vec[0].Metric["instance"]) != target {
		t.Fatalf("relaygate_inflight_requests = %v, want one sample 3 from instance %s", vec, target)
	}
	// The self-scrape was rewritten to the test's port; it answers too.
	if _, err := p.WaitForSeries(ctx, `up{job="prometheus"} == 1`); err != nil {
		t.Fatal(err)
	}

	targets, err := p.Targets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var gateway *promv1.ActiveTarget
	for i, a := range targets.Active {
		if a.ScrapePool == "relaygate" {
			gateway = &targets.Active[i]
		}
	}
	if gateway == nil || string(gateway.Labels["instance"]) != target || gateway.Health != promv1.HealthGood ||
		gateway.ScrapeURL != "http://"+target+"/metrics" {
		t.Fatalf("relaygate target = %+v, want %s/metrics up", gateway, target)
	}

	wantRules := projectRuleNames(t)
	// Rules report health "unknown" until their first evaluation; wait for
	// one, using the rule engine's own metric as the signal.
	if _, err := p.WaitForSeries(ctx, `prometheus_rule_group_last_evaluation_timestamp_seconds{rule_group=~".*;relaygate"} > 0`); err != nil {
		t.Fatal(err)
	}
	rules, err := p.Rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, g := range rules.Groups {
		if !strings.HasPrefix(g.Name, "relaygate") { // the project's groups: relaygate, relaygate-model-server
			continue
		}
		for _, r := range g.Rules {
			switch r := r.(type) {
			case promv1.AlertingRule:
				got[r.Name] = true
				if r.Health == promv1.RuleHealthBad {
					t.Errorf("alert %s: %s", r.Name, r.LastError)
				}
			case promv1.RecordingRule:
				got[r.Name] = true
				if r.Health == promv1.RuleHealthBad {
					t.Errorf("recording rule %s: %s", r.Name, r.LastError)
				}
			}
		}
	}
	for _, name := range wantRules {
		if !got[name] {
			t.Errorf("rule %s from deploy/prometheus/rules is not loaded; loaded: %v", name, got)
		}
	}
}

// projectRuleNames is every alert and record name in the project's rule
// files, read as the smoke test reads them, so the test follows the rules
// instead of repeating them.
func projectRuleNames(t *testing.T) []string {
	t.Helper()
	names, err := smoketest.ProjectRules()
	if err != nil {
		t.Fatal(err)
	}
	if len(names) < 10 {
		t.Fatalf("only %d rules found in deploy/prometheus/rules: %v", len(names), names)
	}
	return names
}

// fatalRecorder stands in for the test in a fixture call that must fail: it
// keeps the message and ends the goroutine the way t.Fatal does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestStartPrometheusFailsWithoutBinary(t *testing.T) {
	tests := []struct {
		name   string
		path   string // PATH for the lookup; unchanged when empty
		binary string
		want   []string
	}{
		{name: "not on PATH", path: t.TempDir(), want: []string{"prometheus is not installed", "make test"}},
		{name: "explicit binary missing", binary: filepath.Join(t.TempDir(), "prometheus"), want: []string{"prometheus binary", "no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.path != "" {
				t.Setenv("PATH", tt.path)
			}
			rec := &fatalRecorder{TB: t}
			done := make(chan *Prometheus, 1)
			go func() {
				defer close(done)
				done <- StartPrometheus(rec, PrometheusOptions{Binary: tt.binary})
			}()
			if p := <-done; p != nil {
				t.Fatalf("StartPrometheus returned %+v, want a failed test", p)
			}
			for _, w := range tt.want {
				if !strings.Contains(rec.msg, w) {
					t.Errorf("failure message %q lacks %q", rec.msg, w)
				}
			}
		})
	}
}

func TestWritePrometheusConfigRejects(t *testing.T) {
	tests := []struct {
		name, config, want string
	}{
		{
			name:   "no gateway job",
			config: "scrape_configs:\n  - job_name: other\n    static_configs: [{targets: ['x:1']}]\n",
			want:   `no scrape job "relaygate"`,
		},
		{
			name:   "gateway job without file_sd",
			config: "scrape_configs:\n  - job_name: relaygate\n    static_configs: [{targets: ['x:1']}]\n",
			want:   "reads no file_sd_configs",
		},
		{
			name:   "not YAML",
			config: "scrape_configs: [\n",
			want:   "parse prometheus config",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "in.yml")
			if err := os.WriteFile(src, []byte(tt.config), 0o644); err != nil {
				t.Fatal(err)
			}
			err := writePrometheusConfig(src, filepath.Join(dir, "out.yml"), "127.0.0.1:9090", 1e9)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestPrometheusTargetFiles checks the committed file_sd examples parse as
// Prometheus reads them: a list of groups of host:port targets.
func TestPrometheusTargetFiles(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "deploy", "prometheus", "targets", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no deploy/prometheus/targets/*.json (%v)", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			var groups []prometheusTargetGroup
			if err := dec.Decode(&groups); err != nil {
				t.Fatalf("not a file_sd file: %v", err)
			}
			if len(groups) == 0 {
				t.Fatal("no target groups")
			}
			for _, g := range groups {
				for _, target := range g.Targets {
					host, port, err := net.SplitHostPort(target)
					if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n <= 0 || n > 65535 {
						t.Errorf("target %q is not host:port", target)
					}
				}
			}
		})
	}
}
