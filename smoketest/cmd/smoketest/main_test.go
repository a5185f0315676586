package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUsage(t *testing.T) {
	cases := [][]string{
		{},
		{"-stack", "dev", "-outputs", "x.json"},
		{"-outputs", "x.json", "extra"},
		{"-no-such-flag"},
		{"-outputs", "x.json", "-wait-ready", "-1s"},
	}
	for _, args := range cases {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 2 {
			t.Errorf("run(%q) = %d, want 2 (usage)", args, code)
		}
	}
}

func TestBadOutputsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outputs.json")
	if err := os.WriteFile(path, []byte(`{"gatewayUrl": "http://127.0.0.1:1", "gatewayApiKey": "[secret]", "expectedGpuCount": 0, "latencyBudgetP95Ms": 1500}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"-outputs", path}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "--show-secrets") {
		t.Errorf("exit %d, stderr %q; want 2 and the fix for a hidden secret", code, errOut.String())
	}
}

// TestUnreachableStack: outputs that point at nothing give a failed report
// and exit status 1, as JSON on stdout with -json -.
func TestUnreachableStack(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	path := filepath.Join(t.TempDir(), "outputs.json")
	doc := `{"gatewayUrl": "` + url + `", "prometheusUrl": "` + url + `", "gatewayApiKey": "sk-cmd-test-0123456789",
		"expectedGpuCount": 0, "latencyBudgetP95Ms": 1500, "hosts": [], "instanceIds": [], "imageRef": "x"}`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := run([]string{"-outputs", path, "-json", "-", "-requests", "2", "-timeout", "20s", "-prometheus-wait", "2s", "-wait-ready", "300ms"}, &out, &errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errOut.String())
	}
	var rep struct {
		Passed bool `json:"passed"`
		Steps  []struct {
			Name, Status, Hint string
		} `json:"steps"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("stdout is not the JSON report: %v\n%s", err, out.String())
	}
	if rep.Passed || len(rep.Steps) != 13 || rep.Steps[0].Status != "fail" || rep.Steps[0].Hint == "" {
		t.Errorf("report = %+v, want 12 checks, the first failed with a hint", rep)
	}
	if !strings.Contains(errOut.String(), "GET /ready did not answer 200 within 300ms") {
		t.Errorf("no bounded wait for /ready on stderr:\n%s", errOut.String())
	}
	if !strings.Contains(errOut.String(), "smoke: health") {
		t.Errorf("no progress on stderr:\n%s", errOut.String())
	}
	if strings.Contains(out.String()+errOut.String(), "sk-cmd-test-0123456789") {
		t.Error("the key was printed")
	}
}
