package smoketest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// stackOutputJSON is what `pulumi stack output --json --show-secrets`
// prints for a dev stack.
const stackOutputJSON = `{
  "expectedGpuCount": 1,
  "gatewayApiKey": "0f3c9a1d5b7e2c4a6d8f0b1e3a5c7d9f",
  "gatewayUrl": "http://54.210.12.34:8000/",
  "hosts": ["54.210.12.34"],
  "imageRef": "123456789012.dkr.ecr.us-east-1.amazonaws.com/relaygate-dev@sha256:5f0c",
  "instanceIds": ["i-0abc123def4567890"],
  "latencyBudgetP95Ms": 1500,
  "prometheusUrl": "http://54.210.12.34:9090"
}`

func TestParseOutputs(t *testing.T) {
	full := func() map[string]any {
		var m map[string]any
		if err := json.Unmarshal([]byte(stackOutputJSON), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	cases := []struct {
		name    string
		edit    func(m map[string]any)
		want    *Outputs
		wantErr []string
	}{
		{
			name: "dev stack",
			edit: func(map[string]any) {},
			want: &Outputs{
				GatewayURL: "http://54.210.12.34:8000", PrometheusURL: "http://54.210.12.34:9090",
				GatewayAPIKey: "0f3c9a1d5b7e2c4a6d8f0b1e3a5c7d9f", ExpectedGPUCount: 1, LatencyBudgetP95Ms: 1500,
				ImageRef: "123456789012.dkr.ecr.us-east-1.amazonaws.com/relaygate-dev@sha256:5f0c",
				Hosts:    []string{"54.210.12.34"}, InstanceIDs: []string{"i-0abc123def4567890"},
			},
		},
		{
			name: "local stack: no hosts or instances, numbers as strings",
			edit: func(m map[string]any) {
				m["hosts"], m["instanceIds"] = nil, []any{}
				m["expectedGpuCount"], m["latencyBudgetP95Ms"] = "0", "2000"
			},
			want: &Outputs{
				GatewayURL: "http://54.210.12.34:8000", PrometheusURL: "http://54.210.12.34:9090",
				GatewayAPIKey: "0f3c9a1d5b7e2c4a6d8f0b1e3a5c7d9f", ExpectedGPUCount: 0, LatencyBudgetP95Ms: 2000,
				ImageRef:    "123456789012.dkr.ecr.us-east-1.amazonaws.com/relaygate-dev@sha256:5f0c",
				InstanceIDs: []string{},
			},
		},
		{
			name: "a stack with a model server",
			edit: func(m map[string]any) {
				m["selfHostedModel"], m["selfHostedUpstream"] = "qwen2.5-7b-instruct", "self-hosted"
			},
			want: &Outputs{
				GatewayURL: "http://54.210.12.34:8000", PrometheusURL: "http://54.210.12.34:9090",
				GatewayAPIKey: "0f3c9a1d5b7e2c4a6d8f0b1e3a5c7d9f", ExpectedGPUCount: 1, LatencyBudgetP95Ms: 1500,
				ImageRef: "123456789012.dkr.ecr.us-east-1.amazonaws.com/relaygate-dev@sha256:5f0c",
				Hosts:    []string{"54.210.12.34"}, InstanceIDs: []string{"i-0abc123def4567890"},
				SelfHostedModel: "qwen2.5-7b-instruct", SelfHostedUpstream: "self-hosted",
			},
		},
		{
			name: "a stack with the ledger, the flag as a string",
			edit: func(m map[string]any) { m["ledgerEnabled"] = "true" },
			want: &Outputs{
				GatewayURL: "http://54.210.12.34:8000", PrometheusURL: "http://54.210.12.34:9090",
				GatewayAPIKey: "0f3c9a1d5b7e2c4a6d8f0b1e3a5c7d9f", ExpectedGPUCount: 1, LatencyBudgetP95Ms: 1500,
				ImageRef: "123456789012.dkr.ecr.us-east-1.amazonaws.com/relaygate-dev@sha256:5f0c",
				Hosts:    []string{"54.210.12.34"}, InstanceIDs: []string{"i-0abc123def4567890"},
				LedgerEnabled: true,
			},
		},
		{
			name:    "ledger flag not a boolean",
			edit:    func(m map[string]any) { m["ledgerEnabled"] = 1.0 },
			wantErr: []string{"output ledgerEnabled is a float64, want true or false"},
		},
		{
			name:    "a model without its upstream",
			edit:    func(m map[string]any) { m["selfHostedModel"], m["selfHostedUpstream"] = "qwen2.5-7b-instruct", "" },
			wantErr: []string{`outputs selfHostedModel "qwen2.5-7b-instruct" and selfHostedUpstream "" must be set together`},
		},
		{
			name:    "secret not shown",
			edit:    func(m map[string]any) { m["gatewayApiKey"] = "[secret]" },
			wantErr: []string{"--show-secrets"},
		},
		{
			name: "every problem named",
			edit: func(m map[string]any) {
				delete(m, "gatewayUrl")
				delete(m, "gatewayApiKey")
				m["expectedGpuCount"] = 1.5
				m["latencyBudgetP95Ms"] = true
				m["hosts"] = []any{"a", 3.0}
				m["prometheusUrl"] = "ftp://x"
			},
			wantErr: []string{
				"output gatewayUrl is missing", "output gatewayApiKey is missing", "output expectedGpuCount is 1.5",
				"output latencyBudgetP95Ms is a bool", "output hosts[1] is a float64", `output prometheusUrl: "ftp://x" is not an http(s) URL`,
			},
		},
		{
			name:    "credentials in the URL",
			edit:    func(m map[string]any) { m["gatewayUrl"] = "https://user:pass@gw.example.com" },
			wantErr: []string{"the URL carries credentials"},
		},
		{
			name:    "zero budget",
			edit:    func(m map[string]any) { m["latencyBudgetP95Ms"] = 0.0 },
			wantErr: []string{"a p95 budget of zero cannot be met"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := full()
			tc.edit(m)
			got, err := ParseOutputs(m)
			if tc.want != nil {
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, *tc.want) {
					t.Errorf("got %#v\nwant %#v", got, *tc.want)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "pass@") {
				t.Error("the error repeats the URL's password")
			}
		})
	}
}

func TestReadOutputsFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "outputs.json")
	if err := os.WriteFile(good, []byte(stackOutputJSON), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := ReadOutputsFile(good)
	if err != nil || o.GatewayURL != "http://54.210.12.34:8000" {
		t.Fatalf("ReadOutputsFile = %v, %v", o, err)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte("gatewayUrl: x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadOutputsFile(bad); err == nil || !strings.Contains(err.Error(), "pulumi stack output --json --show-secrets") {
		t.Errorf("a YAML file gave %v, want the expected shape named", err)
	}
	if _, err := ReadOutputsFile(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("a missing file gave no error")
	}
}

func TestOutputsNeverPrintTheKey(t *testing.T) {
	o := Outputs{GatewayURL: "http://gw", GatewayAPIKey: "sk-very-secret-key"}
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		if s := fmt.Sprintf(f, o); strings.Contains(s, "sk-very-secret-key") || !strings.Contains(s, "[secret]") {
			t.Errorf("Sprintf(%q) = %s", f, s)
		}
	}
}
