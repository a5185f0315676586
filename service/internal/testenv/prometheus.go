package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"gopkg.in/yaml.v3"
)

// Failure guards, not expectations: Prometheus is ready in about a second and
// a series shows up after one or two scrape intervals, but a loaded shared CI
// machine can take much longer, and a flaky fixture costs more than a slow
// failure.
const (
	prometheusStartTimeout = 60 * time.Second
	prometheusStopTimeout  = 30 * time.Second
	prometheusWaitTimeout  = 2 * time.Minute
)

// prometheusOutputTail is how much of the server's output an error quotes.
const prometheusOutputTail = 8 << 10

// prometheusJob is the scrape job of the gateway in deploy/prometheus/prometheus.yml;
// the alert rules select on it (up{job="relaygate"}).
const prometheusJob = "relaygate"

// PrometheusOptions configures StartPrometheus.
type PrometheusOptions struct {
	// Targets are the host:port addresses scraped as job "relaygate" (their
	// /metrics), written to the file_sd file the project config reads.
	Targets []string
	// ScrapeInterval is used for scraping and rule evaluation; 1s when zero,
	// so a test sees a series within seconds instead of the production 15s.
	ScrapeInterval time.Duration
	// ConfigFile is the config to start from; this repository's
	// deploy/prometheus/prometheus.yml when empty.
	ConfigFile string
	// Binary is the prometheus executable; found on PATH when empty.
	Binary string
}

// Prometheus is a prometheus server child process owned by one test, running
// the project's config and alert rules against the test's targets.
type Prometheus struct {
	// Addr is host:port on 127.0.0.1.
	Addr string
	// URL is http://Addr, the form the smoke test's prometheusUrl takes.
	URL string
	// API is a client for the full HTTP API, for what the helpers below do
	// not cover.
	API promv1.API

	proc *child
}

// StartPrometheus starts prometheus on a free 127.0.0.1 port with a temporary
// storage directory and a config derived from the project's (same rules,
// same jobs; short intervals; the gateway job pointed at opts.Targets), waits
// until /-/ready answers and stops it in t.Cleanup. If prometheus is not
// installed the test fails, saying that `make test` installs it.
func StartPrometheus(t testing.TB, opts PrometheusOptions) *Prometheus {
	t.Helper()
	bin := opts.Binary
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("prometheus"); err != nil {
			t.Fatalf("testenv: prometheus is not installed (%v); `make test` installs it "+
				"(scripts/install-tools.sh), or run `apt-get install prometheus`", err)
			return nil
		}
	} else if _, err := os.Stat(bin); err != nil {
		t.Fatalf("testenv: prometheus binary %s: %v", bin, err)
		return nil
	}
	if opts.ScrapeInterval <= 0 {
		opts.ScrapeInterval = time.Second
	}
	if opts.ConfigFile == "" {
		root, err := moduleRoot()
		if err != nil {
			t.Fatalf("testenv: find the project's Prometheus config: %v", err)
		}
		opts.ConfigFile = filepath.Join(root, "deploy", "prometheus", "prometheus.yml")
	}

	dir := t.TempDir()
	if err := writePrometheusTargets(filepath.Join(dir, "targets"), opts.Targets); err != nil {
		t.Fatalf("testenv: %v", err)
	}

	var p *Prometheus
	onFreePort(t, "prometheus", func(try, port int) error {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		configFile := filepath.Join(dir, "prometheus.yml")
		if err := writePrometheusConfig(opts.ConfigFile, configFile, addr, opts.ScrapeInterval); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		storage := filepath.Join(dir, "data"+strconv.Itoa(try))
		proc, err := startPrometheusProcess(t.Context(), bin, configFile, storage, addr)
		if err != nil {
			return err
		}
		client, err := api.NewClient(api.Config{Address: "http://" + addr})
		if err != nil {
			proc.stop(prometheusStopTimeout)
			t.Fatalf("testenv: prometheus client for %s: %v", addr, err)
		}
		p = &Prometheus{Addr: addr, URL: "http://" + addr, API: promv1.NewAPI(client), proc: proc}
		return nil
	})
	t.Cleanup(func() {
		p.proc.stop(prometheusStopTimeout)
		if t.Failed() {
			t.Logf("testenv: prometheus output:\n%s", p.proc.out.Tail(prometheusOutputTail))
		}
	})
	return p
}

// Query evaluates an instant PromQL query now and returns its vector.
func (p *Prometheus) Query(ctx context.Context, promql string) (model.Vector, error) {
	v, _, _, err := p.API.Query(ctx, promql, time.Now())
	if err != nil {
		return nil, fmt.Errorf("prometheus query %q: %w", promql, err)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("prometheus query %q: result is a %s, not a vector", promql, v.Type())
	}
	return vec, nil
}

// WaitForSeries polls the query until it returns at least one sample and
// returns that result. It gives up after a generous deadline (or ctx's, if
// sooner), reporting the last error or empty result.
func (p *Prometheus) WaitForSeries(ctx context.Context, promql string) (model.Vector, error) {
	ctx, cancel := context.WithTimeout(ctx, prometheusWaitTimeout)
	defer cancel()
	// Prometheus offers no push signal for "a sample arrived": polling at a
	// fraction of the scrape interval is the way to learn it.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		vec, err := p.Query(ctx, promql)
		if err == nil && len(vec) > 0 {
			return vec, nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			if lastErr == nil {
				lastErr = errors.New("no samples")
			}
			return nil, fmt.Errorf("prometheus: waiting for %q: %w (last: %v)", promql, ctx.Err(), lastErr)
		case <-p.proc.exited:
			return nil, fmt.Errorf("prometheus: waiting for %q: the server exited: %s", promql, p.proc.out.Tail(prometheusOutputTail))
		case <-tick.C:
		}
	}
}

// Rules returns the loaded rule groups (/api/v1/rules).
func (p *Prometheus) Rules(ctx context.Context) (promv1.RulesResult, error) {
	r, err := p.API.Rules(ctx, nil)
	if err != nil {
		return r, fmt.Errorf("prometheus rules: %w", err)
	}
	return r, nil
}

// Targets returns the active and dropped scrape targets (/api/v1/targets).
func (p *Prometheus) Targets(ctx context.Context) (promv1.TargetsResult, error) {
	r, err := p.API.Targets(ctx)
	if err != nil {
		return r, fmt.Errorf("prometheus targets: %w", err)
	}
	return r, nil
}

// writePrometheusConfig rewrites the project config for a test: intervals
// shortened, rule files made absolute so they still load from the temp
// directory, the self-scrape pointed at the real address. The gateway job's
// file_sd paths stay relative, so the same targets/*.json layout is read
// from next to the new config.
func writePrometheusConfig(src, dst, selfAddr string, interval time.Duration) error {
	raw, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("read prometheus config: %w", err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("parse prometheus config %s: %w", src, err)
	}
	global, _ := cfg["global"].(map[string]any)
	if global == nil {
		global = map[string]any{}
	}
	iv := model.Duration(interval).String()
	global["scrape_interval"] = iv
	global["evaluation_interval"] = iv
	global["scrape_timeout"] = iv
	cfg["global"] = global

	srcDir := filepath.Dir(src)
	rules, _ := cfg["rule_files"].([]any)
	for i, r := range rules {
		if s, ok := r.(string); ok && !filepath.IsAbs(s) {
			rules[i] = filepath.Join(srcDir, s)
		}
	}

	jobs, _ := cfg["scrape_configs"].([]any)
	found := false
	for _, j := range jobs {
		job, _ := j.(map[string]any)
		switch job["job_name"] {
		case prometheusJob:
			found = true
			if _, ok := job["file_sd_configs"]; !ok {
				return fmt.Errorf("prometheus config %s: job %q reads no file_sd_configs, so its targets cannot be set", src, prometheusJob)
			}
		case "prometheus":
			job["static_configs"] = []any{map[string]any{"targets": []any{selfAddr}}}
		}
	}
	if !found {
		return fmt.Errorf("prometheus config %s: no scrape job %q", src, prometheusJob)
	}

	out, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("encode prometheus config: %w", err)
	}
	if err := os.WriteFile(dst, out, 0o644); err != nil {
		return fmt.Errorf("write prometheus config: %w", err)
	}
	return nil
}

// prometheusTargetGroup is one entry of a Prometheus file_sd JSON file.
type prometheusTargetGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// writePrometheusTargets writes the file_sd file for the gateway job; the
// project config reads targets/*.json next to itself.
func writePrometheusTargets(dir string, targets []string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("prometheus targets dir: %w", err)
	}
	if targets == nil {
		targets = []string{} // "targets": null is not a valid file_sd group
	}
	b, err := json.Marshal([]prometheusTargetGroup{{Targets: targets, Labels: map[string]string{}}})
	if err != nil {
		return fmt.Errorf("encode prometheus targets: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "gateway.json"), b, 0o644); err != nil {
		return fmt.Errorf("write prometheus targets: %w", err)
	}
	return nil
}

func startPrometheusProcess(ctx context.Context, bin, configFile, storage, addr string) (*child, error) {
	cmd := exec.Command(bin,
		"--config.file="+configFile,
		"--storage.tsdb.path="+storage,
		"--web.listen-address="+addr,
		"--log.level=warn",
	)
	p, err := startChild(cmd, prometheusProcAttr())
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, prometheusStartTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	ready := "http://" + addr + "/-/ready"
	var lastErr error
	for {
		// /-/ready is the readiness signal Prometheus offers; it has to be polled.
		if lastErr = prometheusReady(ctx, ready); lastErr == nil {
			return p, nil
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("prometheus on %s exited: %s", addr, p.out.Tail(prometheusOutputTail))
		case <-ctx.Done():
			p.stop(prometheusStopTimeout)
			return nil, fmt.Errorf("prometheus on %s not ready within %s: %w; output: %s",
				addr, prometheusStartTimeout, lastErr, p.out.Tail(prometheusOutputTail))
		case <-tick.C:
		}
	}
}

func prometheusReady(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// moduleRoot is the directory of go.mod above the working directory, which
// `go test` sets to the package under test.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}
