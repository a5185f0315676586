package migration

import (
	"bytes"
	"encoding/json"
	"image/png"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// wantErr fails t unless err is what a case wants: an error that says
// want, or none for want "". It reports whether an error was wanted, so
// the case stops there.
func wantErr(t *testing.T, err error, want string) bool {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatal(err)
		}
		return false
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	return true
}

// startSim serves a simulator over loopback and returns its base URL with /v1.
func startSim(t *testing.T, cfg upstreamsim.Config) string {
	t.Helper()
	srv := httptest.NewServer(upstreamsim.New(cfg))
	t.Cleanup(srv.Close)
	return srv.URL + "/v1"
}

// closedURL is a loopback base URL nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr + "/v1"
}

// parseTestConfig parses a gateway config with only the given variables set.
func parseTestConfig(t *testing.T, doc string, env map[string]string) *config.Config {
	t.Helper()
	cfg, err := parseConfig([]byte(doc), func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	if err != nil {
		t.Fatalf("config: %v\n%s", err, doc)
	}
	return cfg
}

// testPrompts are short prompts whose answers are longer than the
// simulators' completions, so every answer has the simulator's length.
func testPrompts(t *testing.T) []Prompt {
	t.Helper()
	ps, err := ParsePrompts(strings.NewReader(`
{"id": "a", "prompt": "Say hello.", "max_tokens": 100}
{"id": "b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a relay?"}], "max_tokens": 100}
{"id": "c", "prompt": "Summarize the plot of a long novel in one paragraph, please, with some detail.", "max_completion_tokens": 100}
`))
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// checkPNG fails unless path holds a PNG image of a sensible size.
func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s is not a PNG: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() < 300 || b.Dy() < 200 {
		t.Errorf("%s is %dx%d", path, b.Dx(), b.Dy())
	}
}

func tempPath(t *testing.T, name string) string {
	return filepath.Join(t.TempDir(), name)
}

// arrival is one request as an upstream saw it.
type arrival struct {
	upstream, content string
	stream            bool
}

// recorder notes, in order, the chat requests that reach the upstreams it
// wraps.
type recorder struct {
	mu   sync.Mutex
	seen []arrival
}

func (rec *recorder) wrap(name string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/chat/completions") {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var req struct {
			Messages []struct{ Content string } `json:"messages"`
			Stream   bool                       `json:"stream"`
		}
		_ = json.Unmarshal(body, &req)
		a := arrival{upstream: name, stream: req.Stream}
		for _, m := range req.Messages {
			a.content += m.Content + "\n"
		}
		rec.mu.Lock()
		rec.seen = append(rec.seen, a)
		rec.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
	})
}

func (rec *recorder) arrivals() []arrival {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]arrival(nil), rec.seen...)
}
