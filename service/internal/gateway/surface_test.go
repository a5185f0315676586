package gateway

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/relaygate/relaygate/service/internal/config"
	"github.com/relaygate/relaygate/service/internal/metrics"
)

// newYAMLGateway serves a gateway for a whole YAML config, for tests whose
// models or upstreams newGateway's fixed shape cannot express.
func newYAMLGateway(t *testing.T, yaml string) (*httptest.Server, *metrics.Metrics) {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yaml)
	}
	m := metrics.New()
	gw := New(cfg, Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)), Metrics: m})
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	return srv, m
}

func do(t *testing.T, method, url string, body io.Reader, hdr ...string) result {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, resp.Header, b}
}

func TestModelByID(t *testing.T) {
	up := newFakeUpstream(t, okCompletion)
	gw, _ := newYAMLGateway(t, fmt.Sprintf(`
client_keys: [%q]
upstreams:
  - {name: a, base_url: %q}
models:
  - {name: m, route: [a]}
  - {name: deepseek-ai/DeepSeek-V3, route: [a]}
`, testClientKey, up.URL+"/v1"))
	auth := "Bearer " + testClientKey
	tests := []struct {
		name, method, path, auth string
		status                   int
		id, code                 string
	}{
		{"plain id", "GET", "/v1/models/m", auth, 200, "m", ""},
		{"id with a slash", "GET", "/v1/models/deepseek-ai/DeepSeek-V3", auth, 200, "deepseek-ai/DeepSeek-V3", ""},
		{"unknown id", "GET", "/v1/models/gpt-5", auth, 404, "", "model_not_found"},
		{"unknown id under a known prefix", "GET", "/v1/models/deepseek-ai/nope", auth, 404, "", "model_not_found"},
		{"empty id", "GET", "/v1/models/", auth, 404, "", "model_not_found"},
		{"no key", "GET", "/v1/models/m", "", 401, "", "invalid_api_key"},
		{"wrong method", "POST", "/v1/models/m", auth, 405, "", "method_not_allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr []string
			if tt.auth != "" {
				hdr = []string{"Authorization", tt.auth}
			}
			res := do(t, tt.method, gw.URL+tt.path, nil, hdr...)
			if res.status != tt.status {
				t.Fatalf("status %d, want %d: %s", res.status, tt.status, res.body)
			}
			if tt.code != "" {
				if _, _, code := openAIError(t, res.body); code != tt.code {
					t.Errorf("code %q, want %q", code, tt.code)
				}
				return
			}
			var got map[string]any
			if err := json.Unmarshal(res.body, &got); err != nil {
				t.Fatalf("not JSON: %s", res.body)
			}
			if got["id"] != tt.id || got["object"] != "model" || got["owned_by"] != "relaygate" || got["created"] == nil || len(got) != 4 {
				t.Errorf("model = %s, want {id: %s, object: model, created, owned_by}", res.body, tt.id)
			}
			if !strings.HasPrefix(res.header.Get("Content-Type"), "application/json") {
				t.Errorf("Content-Type %q", res.header.Get("Content-Type"))
			}
		})
	}
}
