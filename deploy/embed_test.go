package deploy

import (
	"os/exec"
	"path"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestHostBootstrap(t *testing.T) {
	t.Parallel()
	if !strings.HasPrefix(HostBootstrap, "#!/usr/bin/env bash\n") {
		t.Fatalf("bootstrap does not start with a bash shebang: %.40q", HostBootstrap)
	}
	// What the infra program and the readiness check rely on.
	for _, want := range []string{
		"set -Eeuo pipefail",
		"RELAYGATE_EXPECTED_GPUS",
		"nvidia-ctk runtime configure --runtime=docker",
		"systemctl enable docker.service",
		"docker run --rm --gpus all",
		"/var/lib/relaygate/bootstrap-ok",
	} {
		if !strings.Contains(HostBootstrap, want) {
			t.Errorf("bootstrap does not contain %q", want)
		}
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not installed")
	}
	cmd := exec.Command(bash, "-n")
	cmd.Stdin = strings.NewReader(HostBootstrap)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("bash -n: %v\n%s", err, out)
	}
}

// TestPrometheusFilesMatchTheirConfig checks that the files uploaded next to
// prometheus.yml are the ones its rule_files and file_sd_configs name, so a
// renamed rules file cannot silently leave Prometheus without alerts.
func TestPrometheusFilesMatchTheirConfig(t *testing.T) {
	t.Parallel()
	files, err := PrometheusFiles()
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			FileSD []struct {
				Files []string `yaml:"files"`
			} `yaml:"file_sd_configs"`
		} `yaml:"scrape_configs"`
		Alerting struct {
			Alertmanagers []struct {
				FileSD []struct {
					Files []string `yaml:"files"`
				} `yaml:"file_sd_configs"`
			} `yaml:"alertmanagers"`
		} `yaml:"alerting"`
	}
	if err := yaml.Unmarshal([]byte(files["prometheus.yml"]), &cfg); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	var patterns []string
	patterns = append(patterns, cfg.RuleFiles...)
	for _, sc := range cfg.ScrapeConfigs {
		for _, sd := range sc.FileSD {
			patterns = append(patterns, sd.Files...)
		}
	}
	for _, am := range cfg.Alerting.Alertmanagers {
		for _, sd := range am.FileSD {
			patterns = append(patterns, sd.Files...)
		}
	}
	if len(cfg.RuleFiles) == 0 || len(patterns) == len(cfg.RuleFiles) {
		t.Fatalf("prometheus.yml names no rule files or no file_sd files: %+v", cfg)
	}
	for _, p := range patterns {
		matched := 0
		for name := range files {
			if ok, err := path.Match(p, name); err != nil {
				t.Fatalf("pattern %q: %v", p, err)
			} else if ok {
				matched++
			}
		}
		if matched == 0 {
			t.Errorf("prometheus.yml refers to %q but no embedded file matches it (have %v)", p, keys(files))
		}
	}
	for name := range files {
		if strings.HasSuffix(name, ".test.yml") {
			t.Errorf("%s is a promtool test, not for Prometheus", name)
		}
	}
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestAlertmanagerConfigHasItsPlaceholder: the program swaps the stack's
// webhook URL for the placeholder; a config edited without it would send
// alerts nowhere.
func TestAlertmanagerConfigHasItsPlaceholder(t *testing.T) {
	t.Parallel()
	if n := strings.Count(AlertmanagerConfig, AlertWebhookPlaceholder); n != 1 {
		t.Fatalf("alertmanager.yml holds the placeholder %d times, want once", n)
	}
}
