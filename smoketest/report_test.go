package smoketest

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestReportTableAndJSON(t *testing.T) {
	rep := &Report{
		Stack: "dev", GatewayURL: "https://gw.example.com", ImageRef: "repo@sha256:abc",
		Steps: []Step{
			{Name: CheckHealth, Status: Pass, Detail: "status ok", DurationMS: 12},
			{Name: CheckAuth, Status: Fail, Detail: "the gateway refused key sk-leaky-0123456789\n(401)", Hint: "set gatewayApiKey", DurationMS: 0.4},
			{Name: CheckCompletion, Status: Skip, Detail: "needs a key"},
		},
		Latency: &LatencyStats{Requests: 30, Concurrency: 4, BudgetP95MS: 1500, Total: Percentiles{P50: 800, P95: 1234, P99: 1400, Max: 1500}},
	}
	rep.redact("sk-leaky-0123456789")
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	out := table.String()
	var norm []string // each line with its column padding collapsed
	for _, l := range strings.Split(out, "\n") {
		norm = append(norm, oneLine(l))
	}
	flat := strings.Join(norm, "\n")
	for _, want := range []string{
		"Relaygate smoke test of stack dev: gateway https://gw.example.com, image repo@sha256:abc",
		"health PASS 12ms status ok",
		"auth FAIL 400µs the gateway refused key [redacted] (401)",
		"completion SKIP - needs a key",
		"total (client) 800ms 1234ms 1400ms 1500ms",
		"FAILED: 2 of 3 checks did not pass. What to do:",
		"→ set gatewayApiKey",
	} {
		if !strings.Contains(flat, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "sk-leaky") {
		t.Error("the table shows the key")
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	steps := back["steps"].([]any)
	if len(steps) != 3 || steps[1].(map[string]any)["status"] != "fail" || back["latency"].(map[string]any)["total"].(map[string]any)["p95_ms"] != 1234.0 {
		t.Errorf("JSON report = %s", js.String())
	}
}

// TestNotApplicableDoesNotFail: a check of a part the stack does not have
// (a model server, a ledger) is shown but neither fails the run nor is
// listed under what to do; a skip still does.
func TestNotApplicableDoesNotFail(t *testing.T) {
	rep := &Report{GatewayURL: "http://127.0.0.1:8000", Steps: []Step{
		{Name: CheckHealth, Status: Pass, Detail: "status ok"},
		{Name: CheckModelServer, Status: NotApplicable, Detail: "the stack runs no model server"},
		{Name: CheckLedger, Status: NotApplicable, Detail: "the gateway has no usage ledger"},
	}}
	if f := rep.Failed(); len(f) != 0 {
		t.Errorf("Failed = %+v, want none", f)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if out := table.String(); !strings.Contains(out, "PASSED: all 3 checks") || !strings.Contains(out, "(2 not applicable to this stack)") ||
		!strings.Contains(oneLine(out), "ledger N/A - the gateway has no usage ledger") {
		t.Errorf("table:\n%s", out)
	}
	rep.Steps = append(rep.Steps, Step{Name: CheckCompletion, Status: Skip, Detail: "needs a key"})
	if f := rep.Failed(); len(f) != 1 || f[0].Name != CheckCompletion {
		t.Errorf("Failed = %+v, want the skipped completion", f)
	}
}
