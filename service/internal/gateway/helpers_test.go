package gateway

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/cache"
	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/testenv"
)

const testClientKey = "sk-test-client-key-0123456789"

// fakeUpstream is an upstream whose behaviour a test scripts per call.
type fakeUpstream struct {
	*httptest.Server
	calls  atomic.Int32
	mu     sync.Mutex
	bodies [][]byte
	auths  []string
	handle func(n int, w http.ResponseWriter, r *http.Request)
}

func newFakeUpstream(t *testing.T, handle func(n int, w http.ResponseWriter, r *http.Request)) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{handle: handle}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.bodies = append(f.bodies, b)
		f.auths = append(f.auths, r.Header.Get("Authorization"))
		f.mu.Unlock()
		n := int(f.calls.Add(1))
		r.Body = io.NopCloser(bytes.NewReader(b))
		f.handle(n, w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeUpstream) lastBody() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bodies[len(f.bodies)-1]
}

// completionJSON is a chat.completion as OpenAI sends it.
const completionJSON = `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12},"x_unknown":{"kept":true}}`

func okCompletion(_ int, w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, completionJSON)
}

// sseChunks writes n content chunks, a usage chunk when asked and [DONE].
func writeSSE(w http.ResponseWriter, r *http.Request, n int, pause time.Duration) {
	w.Header().Set("Content-Type", "text/event-stream")
	fl := w.(http.Flusher)
	for i := 0; i < n; i++ {
		fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t%d \"},\"finish_reason\":null}]}\n\n", i)
		fl.Flush()
		if pause > 0 {
			select {
			case <-time.After(pause):
			case <-r.Context().Done():
				return
			}
		}
	}
	fmt.Fprint(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n")
	body, _ := io.ReadAll(r.Body)
	if bytes.Contains(body, []byte(`"include_usage":true`)) {
		fmt.Fprint(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":4,\"total_tokens\":11}}\n\n")
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	fl.Flush()
}

// cutConnection drops the TCP connection without an HTTP answer.
func cutConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(err)
	}
	_ = conn.Close()
}

type gwOpts struct {
	extra     string // YAML appended to the config
	routeA    string // upstream names in the model's route
	attempts  int
	timeout   string
	breakerN  int
	cooldown  string // circuit_breaker.cooldown; 1h when empty
	idle      string
	noAuth    bool
	maxBody   int
	logBuffer *bytes.Buffer
	logWriter io.Writer // a log sink safe to read while requests run
	backoff   string    // backoff_max
	price     string    // the model's price mapping, YAML; the default when empty
	upstream  string    // YAML keys added to every upstream's mapping, e.g. ", auth: x-api-key"
	redisURL  string    // a response cache on this Redis (extra sets its cache: keys)
	model     string    // the routed model's name; "m" when empty
}

// allAPIs is gwOpts.upstream for upstreams that speak every API.
const allAPIs = ", apis: [chat, embeddings, completions, messages, responses, moderations, images, audio]"

// newGateway serves a gateway whose model "m" (o.model) routes through the given
// upstreams, named a, b, … in order.
func newGateway(t *testing.T, o gwOpts, ups ...*fakeUpstream) (*httptest.Server, *Server, *metrics.Metrics) {
	t.Helper()
	cfg := gatewayConfig(t, o, ups...)
	var logw io.Writer = io.Discard
	if o.logWriter != nil {
		logw = o.logWriter
	}
	if o.logBuffer != nil {
		logw = o.logBuffer
	}
	var c *cache.Cache
	if o.redisURL != "" {
		var err error
		if c, err = cache.New(cache.Options{URL: o.redisURL, TTL: time.Hour, Timeout: 5 * time.Second}); err != nil {
			t.Fatalf("cache: %v", err)
		}
		t.Cleanup(func() { _ = c.Close() })
	}
	m := metrics.New()
	gw := New(cfg, Options{Logger: slog.New(slog.NewJSONHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug})), Metrics: m, Cache: c})
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	return srv, gw, m
}

// gatewayConfig is newGateway's configuration, also for reloading one.
func gatewayConfig(t *testing.T, o gwOpts, ups ...*fakeUpstream) *config.Config {
	t.Helper()
	o.attempts = cmp.Or(o.attempts, 2)
	o.timeout = cmp.Or(o.timeout, "5s")
	o.breakerN = cmp.Or(o.breakerN, 100)
	o.idle = cmp.Or(o.idle, "5s")
	var y strings.Builder
	y.WriteString("listen: \"127.0.0.1:0\"\n")
	if !o.noAuth {
		fmt.Fprintf(&y, "client_keys: [%q]\n", testClientKey)
	}
	if o.maxBody > 0 {
		fmt.Fprintf(&y, "max_body_bytes: %d\n", o.maxBody)
	}
	fmt.Fprintf(&y, "stream_idle_timeout: %s\nupstreams:\n", o.idle)
	names := []string{}
	for i, u := range ups {
		name := string(rune('a' + i))
		names = append(names, name)
		extra := o.upstream
		if !strings.Contains(extra, "apis:") {
			// A loopback upstream would speak chat, embeddings and
			// completions only; test upstreams (the simulator) speak
			// Messages, Responses, moderations and images too. Audio is
			// left to the tests that use it (allAPIs): its series sort
			// before chat's, and metricValue reads the first that matches.
			extra += ", apis: [chat, embeddings, completions, messages, responses, moderations, images]"
		}
		fmt.Fprintf(&y, "  - {name: %s, base_url: %q, api_key: \"upstream-key-%s\", timeout: %s, connect_timeout: %[4]s%s}\n", name, u.URL+"/v1", name, o.timeout, extra)
	}
	route := strings.Join(names, ", ")
	if o.routeA != "" {
		route = o.routeA
	}
	o.price = cmp.Or(o.price, "{input_per_mtok: 1, output_per_mtok: 2}")
	fmt.Fprintf(&y, "models:\n  - name: %q\n    route: [%s]\n    price: %s\n    reference_price: {input_per_mtok: 3, output_per_mtok: 6}\n", cmp.Or(o.model, "m"), route, o.price)
	o.backoff = cmp.Or(o.backoff, "5ms")
	fmt.Fprintf(&y, "retry: {attempts: %d, backoff_min: 1ms, backoff_max: %s}\n", o.attempts, o.backoff)
	o.cooldown = cmp.Or(o.cooldown, "1h")
	fmt.Fprintf(&y, "circuit_breaker: {failures: %d, cooldown: %s}\n", o.breakerN, o.cooldown)
	y.WriteString("log: {level: debug}\n")
	y.WriteString(o.extra)
	cfg, err := config.Parse([]byte(y.String()), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("config: %v\n%s", err, y.String())
	}
	return cfg
}

type result struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request and reads the whole answer. hdr is header name and
// value pairs, set in order; an empty value removes the header.
func do(t *testing.T, method, url string, body io.Reader, hdr ...string) result {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
			continue
		}
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

// withKey is hdr after the test client's Authorization, which hdr may
// replace or remove.
func withKey(hdr ...string) []string {
	return append([]string{"Authorization", "Bearer " + testClientKey}, hdr...)
}

// post sends a JSON body with the test client's key.
func post(t *testing.T, url, path, body string, hdr ...string) result {
	t.Helper()
	hdr = append([]string{"Content-Type", "application/json"}, hdr...)
	return do(t, http.MethodPost, url+path, strings.NewReader(body), withKey(hdr...)...)
}

// openAIError decodes an error body, failing the test if it is not in
// OpenAI's shape.
func openAIError(t *testing.T, b []byte) (message, typ, code string) {
	t.Helper()
	var e struct {
		Error *struct {
			Message string `json:"message"`
			Type    string `json:"type"`
			Code    string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error == nil || e.Error.Message == "" || e.Error.Type == "" {
		t.Fatalf("not an OpenAI error body: %s", b)
	}
	return e.Error.Message, e.Error.Type, e.Error.Code
}

const chatBody = `{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.2,"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"brand_new_param":[1,2,{"x":null}]}`

// metricValue reads one series from the gateway's registry; 0 when absent.
func metricValue(t *testing.T, m *metrics.Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	return testenv.MetricValue(t, m.Registry, name, labels)
}

// waitMetric waits for a series to reach want: a request's metrics are
// recorded as its handler ends, which can be just after the client has read
// the whole answer. The deadline is a failure guard, not a latency bound.
func waitMetric(t *testing.T, m *metrics.Metrics, name string, labels map[string]string, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(t, m, name, labels) != want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := metricValue(t, m, name, labels); got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// openStream posts a stream request with the test client's key and returns
// the answer, its body unread.
func openStream(t *testing.T, gwURL, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, gwURL+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testClientKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}
