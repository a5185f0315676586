package gatewayconfig

import (
	"bytes"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/relaygate/relaygate/infra/internal/stackconfig"
	"github.com/relaygate/relaygate/infra/internal/stackconfig/stackconfigtest"
	gwconfig "github.com/relaygate/relaygate/service/config"
)

// stackCfg is the stack configuration the tests of stackconfig start from,
// on target, with the gateway settings these tests check and then
// overrides.
func stackCfg(t *testing.T, target string, overrides map[string]string) *stackconfig.Config {
	t.Helper()
	s := stackconfigtest.AWSValues()
	maps.Copy(s, map[string]string{
		"relaygate:target":      target,
		"relaygate:modelServer": `{"enabled":false}`,
		"relaygate:ledger":      `{"enabled":false}`,
		"relaygate:upstreams": `[{"name":"holysheep","baseUrl":"https://api.holysheep.ai/v1","apiKeyEnv":"HOLYSHEEP_API_KEY","timeout":"180s","connectTimeout":"30s"},` +
			`{"name":"openai","baseUrl":"https://api.openai.com/v1","apiKeyEnv":"OPENAI_API_KEY"},` +
			`{"name":"gpu-local","baseUrl":"http://10.0.0.5:8001/v1"}]`,
		"relaygate:models": `[{"name":"gpt-4.1","route":["holysheep",{"upstream":"openai","model":"gpt-4.1-2025-04-14","price":{"inputPerMtok":2,"outputPerMtok":8}}],` +
			`"price":{"inputPerMtok":1.5,"outputPerMtok":6},"referencePrice":{"inputPerMtok":2,"outputPerMtok":8}},` +
			`{"name":"llama","route":["gpu-local"],"price":{"inputPerMtok":0,"outputPerMtok":0}}]`,
		"relaygate:retry":     `{"attempts":4,"backoffMin":"250ms","backoffMax":"1m"}`,
		"relaygate:cacheTtl":  "90m",
		"relaygate:rateLimit": `{"rpm":600,"tpm":100000}`,
	})
	maps.Copy(s, overrides)
	c, err := stackconfig.Parse(stackconfigtest.NewSource(s), "dev")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// load reads a rendered config with the gateway's own loader, the way the
// gateway reads it in its container (keys from its environment).
func load(t *testing.T, b []byte) *gwconfig.Config {
	t.Helper()
	env := map[string]string{"GATEWAY_API_KEY": stackconfigtest.GatewayKey, "HOLYSHEEP_API_KEY": "hs-key", "OPENAI_API_KEY": stackconfigtest.OpenAIKey}
	g, err := gwconfig.Parse(b, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatalf("the gateway refuses the rendered config: %v\n%s", err, b)
	}
	return g
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares a rendered config with testdata/name. The gateway's own
// config tests (service/config) load these files with the real
// loader, so the two programs cannot drift apart unnoticed.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("rendered config differs from %s (run go test -update if the change is meant):\n%s", path, got)
	}
}

func TestRenderAWSHost(t *testing.T) {
	t.Parallel()
	c := stackCfg(t, "aws", nil)
	b, err := Render(c, Endpoints{RedisURL: "redis://redis:6379/0", Drain: Drain{Delay: 35 * time.Second, Timeout: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "aws-host.yaml", b)
	g := load(t, b)

	if g.Listen != ":8000" {
		t.Errorf("listen = %q", g.Listen)
	}
	if len(g.ClientKeys) != 1 || g.ClientKeys[0] != stackconfigtest.GatewayKey {
		t.Errorf("client_keys do not expand to the gateway key: %d keys", len(g.ClientKeys))
	}
	if len(g.Upstreams) != 3 {
		t.Fatalf("upstreams = %+v", g.Upstreams)
	}
	hs, oa, local := g.Upstreams[0], g.Upstreams[1], g.Upstreams[2]
	if hs.Name != "holysheep" || hs.BaseURL != "https://api.holysheep.ai/v1" || hs.APIKey != "hs-key" || hs.Timeout.D() != 3*time.Minute || hs.ConnectTimeout.D() != 30*time.Second {
		t.Errorf("holysheep = %+v", hs.Name)
	}
	if oa.APIKey != stackconfigtest.OpenAIKey {
		t.Errorf("openai's key is not ${OPENAI_API_KEY}")
	}
	if local.APIKey != "" {
		t.Errorf("an upstream without apiKeyEnv got an api_key")
	}
	if !strings.Contains(string(b), "\n    timeout: 3m\n") || strings.Count(string(b), "\n    timeout:") != 1 {
		t.Errorf("only holysheep sets a timeout, written as 3m:\n%s", b)
	}

	m := g.Models[0]
	if m.Name != "gpt-4.1" || m.Price.InputPerMTok != 1.5 || m.ReferencePrice == nil || m.ReferencePrice.OutputPerMTok != 8 {
		t.Errorf("model = %+v", m)
	}
	if len(m.Route) != 2 || !reflect.DeepEqual(m.Route[0], gwconfig.RouteEntry{Upstream: "holysheep"}) || !strings.Contains(string(b), "      - holysheep\n") {
		t.Fatalf("route[0] should be the bare name holysheep: %+v\n%s", m.Route, b)
	}
	if r := m.Route[1]; r.Upstream != "openai" || r.Model != "gpt-4.1-2025-04-14" || r.Price == nil || r.Price.OutputPerMTok != 8 {
		t.Errorf("route[1] = %+v", r)
	}
	if g.Models[1].ReferencePrice != nil {
		t.Errorf("a model without referencePrice got one: %+v", g.Models[1].ReferencePrice)
	}

	if g.Retry.Attempts != 4 || g.Retry.BackoffMin.D() != 250*time.Millisecond || g.Retry.BackoffMax.D() != time.Minute {
		t.Errorf("retry = %+v", g.Retry)
	}
	if g.Cache.RedisURL != "redis://redis:6379/0" || g.Cache.TTL.D() != 90*time.Minute {
		t.Errorf("cache = %+v", g.Cache)
	}
	if g.RateLimit.RPM != 600 || g.RateLimit.TPM != 100000 {
		t.Errorf("rate_limit = %+v", g.RateLimit)
	}
	if g.GPU.ExpectedCount != 1 || g.SLO.LatencyP95.D() != 1500*time.Millisecond {
		t.Errorf("gpu = %+v, slo = %+v", g.GPU, g.SLO)
	}
	if g.ShutdownDelay.D() != 35*time.Second || g.ShutdownTimeout.D() != time.Minute {
		t.Errorf("drain = %s, %s", g.ShutdownDelay, g.ShutdownTimeout)
	}
	for _, secret := range []string{stackconfigtest.GatewayKey, stackconfigtest.OpenAIKey} {
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("rendered config contains a secret value:\n%s", b)
		}
	}
	if !bytes.HasPrefix(b, []byte("# Generated by the Relaygate Pulumi program")) {
		t.Errorf("no header:\n%s", b)
	}
}

func TestRenderLocalSimulator(t *testing.T) {
	t.Parallel()
	c := stackCfg(t, "local", map[string]string{
		"relaygate:expectedGpuCount":  "0",
		"relaygate:upstreamSimulator": "true",
		"relaygate:upstreams":         "[]",
		"relaygate:models":            `[{"name":"gpt-4.1","route":["upstream-sim"],"price":{"inputPerMtok":2,"outputPerMtok":8}}]`,
	})
	b, err := Render(c, Endpoints{RedisURL: "redis://redis:6379/0", SimulatorURL: "http://upstream-sim:9000/v1"})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "local-simulator.yaml", b)
	g := load(t, b)
	if len(g.Upstreams) != 1 || g.Upstreams[0].Name != stackconfig.SimulatorUpstream || g.Upstreams[0].BaseURL != "http://upstream-sim:9000/v1" || g.Upstreams[0].APIKey != "" {
		t.Errorf("upstreams = %+v", g.Upstreams)
	}
	if g.GPU.ExpectedCount != 0 {
		t.Errorf("gpu.expected_count = %d", g.GPU.ExpectedCount)
	}
}

// TestRenderModelServer: a host with a model server gets one more
// upstream, its own server on the private network, with no key; a model
// routes to it first. (service/config loads the golden file with the
// gateway's loader.)
func TestRenderModelServer(t *testing.T) {
	t.Parallel()
	c := stackCfg(t, "aws", map[string]string{
		"relaygate:modelServer": `{"model":"Qwen/Qwen2.5-7B-Instruct","servedName":"qwen2.5-7b-instruct"}`,
		"relaygate:models": `[{"name":"qwen2.5-7b-instruct","route":["self-hosted","openai"],"price":{"inputPerMtok":0.35,"outputPerMtok":0.35}},` +
			`{"name":"gpt-4.1","route":["holysheep","openai"],"price":{"inputPerMtok":2,"outputPerMtok":8}}]`,
	})
	b, err := Render(c, Endpoints{RedisURL: "redis://redis:6379/0", ModelServerURL: "http://model-server:8000/v1", Drain: Drain{Timeout: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "aws-model-server.yaml", b)
	g := load(t, b)
	u, ok := g.Upstream(stackconfig.SelfHostedUpstream)
	if !ok {
		t.Fatalf("no %s upstream: %+v", stackconfig.SelfHostedUpstream, g.Upstreams)
	}
	if u.BaseURL != "http://model-server:8000/v1" || u.APIKey != "" || u.Timeout.D() != 5*time.Minute || u.ConnectTimeout.D() != 10*time.Second ||
		u.Health == nil || u.Health.Path != "/health" || u.Health.Interval.D() != 10*time.Second || u.Health.SendKey {
		t.Errorf("self-hosted upstream = %+v", u)
	}
	if r := g.Models[0].Route; len(r) != 2 || r[0].Upstream != stackconfig.SelfHostedUpstream {
		t.Errorf("qwen2.5-7b-instruct route = %+v", r)
	}

	if _, err := Render(c, Endpoints{RedisURL: "redis://redis:6379/0"}); err == nil || !strings.Contains(err.Error(), "modelServer.enabled is true but the model server URL is \"\"") {
		t.Errorf("a stack with a model server rendered without its URL: %v", err)
	}
}

func TestRenderRefusesInconsistentEndpoints(t *testing.T) {
	t.Parallel()
	c := stackCfg(t, "aws", nil)
	tests := []struct {
		name string
		ep   Endpoints
		want string
	}{
		{"no redis", Endpoints{}, "no Redis URL"},
		{"simulator the stack did not ask for", Endpoints{RedisURL: "redis://redis:6379/0", SimulatorURL: "http://upstream-sim:9000/v1"}, "upstreamSimulator is false"},
		{"model server the stack did not ask for", Endpoints{RedisURL: "redis://redis:6379/0", ModelServerURL: "http://model-server:8000/v1"}, "modelServer.enabled is false"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := Render(c, tt.ep); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Render error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestRenderLedger: with the ledger on, the config names the Postgres URL's
// variable only (the URL holds the database password and the file is
// uploaded in plain text) and the spill directory the container's volume
// is mounted at; the gateway's loader accepts it and turns the ledger on.
// Off, the config has no ledger section and the gateway runs without one.
func TestRenderLedger(t *testing.T) {
	t.Parallel()
	const url = "postgres://relaygate:s3cr3t-ledger-pw@ledger-db:5432/relaygate?sslmode=disable"
	c := stackCfg(t, "aws", map[string]string{"relaygate:ledger": `{"enabled":true}`})
	b, err := Render(c, Endpoints{RedisURL: "redis://redis:6379/0", Drain: Drain{Timeout: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "postgres_url: ${"+stackconfig.LedgerURLEnv+"}") || strings.Contains(string(b), "s3cr3t") {
		t.Errorf("the ledger's URL is not a ${VAR}:\n%s", b)
	}
	env := map[string]string{"GATEWAY_API_KEY": stackconfigtest.GatewayKey, "HOLYSHEEP_API_KEY": "hs-key", "OPENAI_API_KEY": stackconfigtest.OpenAIKey, stackconfig.LedgerURLEnv: url}
	g, err := gwconfig.Parse(b, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatalf("the gateway refuses the rendered config: %v\n%s", err, b)
	}
	if !g.Ledger.Enabled() || g.Ledger.PostgresURL != url || g.Ledger.SpillDir != "/var/lib/relaygate/ledger" {
		t.Errorf("ledger enabled %t, spill dir %q, URL expanded %t", g.Ledger.Enabled(), g.Ledger.SpillDir, g.Ledger.PostgresURL == url)
	}

	off, err := Render(stackCfg(t, "aws", nil), Endpoints{RedisURL: "redis://redis:6379/0"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(off), "ledger") || load(t, off).Ledger.Enabled() {
		t.Errorf("a stack without the ledger renders one:\n%s", off)
	}
}
