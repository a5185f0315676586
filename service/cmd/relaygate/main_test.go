package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

func noEnv(string) string { return "" }

// writeConfig writes a gateway config comparing two simulators.
func writeConfig(t *testing.T) (configPath, promptsPath string) {
	t.Helper()
	dir := t.TempDir()
	var urls []string
	for range 2 {
		srv := httptest.NewServer(upstreamsim.New(upstreamsim.Config{CompletionTokens: 8}))
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL+"/v1")
	}
	configPath = filepath.Join(dir, "gateway.yaml")
	doc := fmt.Sprintf(`
client_keys: ["${UNSET_GATEWAY_KEY}"]
upstreams:
  - {name: relay, base_url: %q}
  - {name: official, base_url: %q}
models:
  - name: m
    route: [relay, official]
    price: {input_per_mtok: 1, output_per_mtok: 4}
    reference_price: {input_per_mtok: 2, output_per_mtok: 8}
  - {name: other, route: [relay]}
`, urls[0], urls[1])
	if err := os.WriteFile(configPath, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	promptsPath = filepath.Join(dir, "prompts.jsonl")
	if err := os.WriteFile(promptsPath, []byte(`{"prompt": "hello", "max_tokens": 50}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return configPath, promptsPath
}

func TestCompareCommand(t *testing.T) {
	configPath, promptsPath := writeConfig(t)
	out := t.TempDir()
	jsonPath, chartPath := filepath.Join(out, "sub", "compare.json"), filepath.Join(out, "sub", "compare.png")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"compare", "-config", configPath, "-model", "m", "-prompts", promptsPath,
		"-n", "10", "-concurrency", "2", "-monthly-tokens", "2.5M", "-format", "markdown", "-json", jsonPath, "-chart", chartPath},
		&stdout, &stderr, noEnv)
	if code != exitOK {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	for _, want := range []string{"| UPSTREAM | SENT |", "| relay | 10 | 100.0% |", "| official | 10 |", "2.5M tokens a month"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
		}
	}
	if !strings.Contains(stderr.String(), "compare: 20/20 requests") {
		t.Errorf("no final progress line on stderr:\n%s", stderr.String())
	}
	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		MonthlyTokens float64 `json:"monthly_tokens"`
		Upstreams     []struct {
			Name string `json:"name"`
			OK   int    `json:"ok"`
		} `json:"upstreams"`
	}
	if err := json.Unmarshal(raw, &res); err != nil || res.MonthlyTokens != 2.5e6 || len(res.Upstreams) != 2 || res.Upstreams[1].OK != 10 {
		t.Errorf("JSON %s: %v", raw, err)
	}
	f, err := os.Open(chartPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Errorf("chart: %v", err)
	}
}

func TestCommandErrors(t *testing.T) {
	configPath, promptsPath := writeConfig(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close()
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no command", nil, exitUsage, "usage: relaygate"},
		{"unknown command", []string{"benchmark"}, exitUsage, `unknown command "benchmark"`},
		{"help", []string{"help"}, exitOK, ""},
		{"compare help", []string{"compare", "-h"}, exitOK, "-monthly-tokens"},
		{"bad format", []string{"compare", "-format", "xml"}, exitUsage, `-format "xml"`},
		{"bad volume", []string{"compare", "-monthly-tokens", "lots"}, exitUsage, `-monthly-tokens "lots"`},
		{"stray argument", []string{"compare", "extra"}, exitUsage, "unexpected arguments"},
		{"missing config", []string{"compare", "-config", filepath.Join(t.TempDir(), "none.yaml")}, exitFailed, "no such file"},
		{"missing prompts", []string{"compare", "-config", configPath, "-prompts", "none.jsonl"}, exitFailed, "prompts"},
		{"model needed", []string{"compare", "-config", configPath, "-prompts", promptsPath}, exitUsage, "-model is required: the config has m, other"},
		{"unknown model", []string{"compare", "-config", configPath, "-prompts", promptsPath, "-model", "x"}, exitUsage, `model "x" is not in the config`},
		{"bad window", []string{"report", "-window", "forever"}, exitUsage, `window "forever"`},
		{"bad end", []string{"report", "-end", "yesterday"}, exitUsage, "RFC 3339"},
		{"Prometheus down", []string{"report", "-config", "", "-prometheus", closed}, exitFailed, "connection refused"},
		{"report config missing", []string{"report", "-config", "none.yaml"}, exitFailed, `pass -config ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr, noEnv)
			if code != tt.code || !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tt.code, tt.stderr)
			}
		})
	}
}

func TestParseVolume(t *testing.T) {
	tests := []struct {
		in   string
		want float64
		ok   bool
	}{
		{"100000000", 1e8, true}, {"250M", 2.5e8, true}, {"1.5B", 1.5e9, true}, {"800k", 8e5, true},
		{"0", 0, true}, {"-5M", 0, false}, {"NaN", 0, false}, {"Inf", 0, false}, {"M", 0, false},
	}
	for _, tt := range tests {
		got, err := parseVolume(tt.in)
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("parseVolume(%q) = %v, %v", tt.in, got, err)
		}
	}
}
