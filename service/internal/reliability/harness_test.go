package reliability

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/app"
	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// clientKey is the Bearer key the suite's clients send.
const clientKey = "sk-reliability-client-key-0123456789"

// guard bounds every wait in the suite. It is a failure guard, never an
// expectation: on a healthy machine each wait ends in well under a second.
const guard = 60 * time.Second

// connTracker follows a server's connections through http.Server.ConnState,
// so a test can tell whether connections are left open after it.
type connTracker struct {
	mu    sync.Mutex
	state map[net.Conn]http.ConnState
	total int
}

func (c *connTracker) hook(conn net.Conn, s http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == nil {
		c.state = map[net.Conn]http.ConnState{}
	}
	switch s {
	case http.StateNew:
		c.total++
		c.state[conn] = s
	case http.StateClosed, http.StateHijacked:
		delete(c.state, conn)
	default:
		c.state[conn] = s
	}
}

// open returns how many connections are open and how many of them are
// serving a request.
func (c *connTracker) open() (open, active int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.state {
		if s == http.StateActive {
			active++
		}
	}
	return len(c.state), active
}

// serve starts h on a loopback port with its connections tracked, and
// closes it when the test ends.
func serve(t testing.TB, h http.Handler, errLog io.Writer) (*httptest.Server, *connTracker) {
	t.Helper()
	tr := &connTracker{}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = tr.hook
	if errLog == nil {
		errLog = io.Discard
	}
	srv.Config.ErrorLog = slog.NewLogLogger(slog.NewJSONHandler(errLog, nil).WithAttrs([]slog.Attr{slog.String("component", "http.Server")}), slog.LevelError)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, tr
}

func port(t testing.TB, rawURL string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(strings.TrimPrefix(strings.TrimPrefix(rawURL, "http://"), "https://"))
	if err != nil {
		t.Fatalf("port of %s: %v", rawURL, err)
	}
	n, err := strconv.Atoi(strings.SplitN(p, "/", 2)[0])
	if err != nil {
		t.Fatalf("port of %s: %v", rawURL, err)
	}
	return n
}

// upstream is a simulator served over loopback.
type upstream struct {
	*upstreamsim.Server
	srv   *httptest.Server
	conns *connTracker
	// base is the base_url the gateway's config takes (it ends in /v1).
	base string
}

func startSim(t testing.TB, cfg upstreamsim.Config) *upstream {
	t.Helper()
	sim := upstreamsim.New(cfg)
	srv, tr := serve(t, sim, nil)
	return &upstream{Server: sim, srv: srv, conns: tr, base: srv.URL + "/v1"}
}

// deadURL returns a base URL on a loopback port where nothing listens, as
// for an upstream that is down: connecting is refused at once.
func deadURL(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return "http://" + addr + "/v1"
}

// upstreamSpec is one upstream of a gateway config.
type upstreamSpec struct {
	name, url, key string
	// timeout bounds one attempt (also used as connect_timeout).
	timeout string
}

// gatewaySpec is the part of a gateway config the suite varies. Model "m"
// routes through route, in order.
type gatewaySpec struct {
	upstreams []upstreamSpec
	route     []string
	// models adds more models: name → route.
	models          map[string][]string
	keys            []string // client_keys; nil means {clientKey}
	attempts        int
	backoffMax      string
	breakerFailures int
	breakerCooldown string
	streamIdle      string
	extra           string // YAML appended as is
}

// viaSim is the spec of a gateway whose one upstream, the route of its
// model, is sim.
func viaSim(sim *upstream) gatewaySpec {
	return gatewaySpec{upstreams: []upstreamSpec{{name: "sim", url: sim.base}}, route: []string{"sim"}}
}

func (s gatewaySpec) yaml() string {
	s.attempts = cmp.Or(s.attempts, 2)
	s.backoffMax = cmp.Or(s.backoffMax, "20ms")
	s.breakerFailures = cmp.Or(s.breakerFailures, 1_000_000)
	s.breakerCooldown = cmp.Or(s.breakerCooldown, "1h")
	s.streamIdle = cmp.Or(s.streamIdle, "60s")
	keys := s.keys
	if keys == nil {
		keys = []string{clientKey}
	}
	var y strings.Builder
	y.WriteString("listen: \"127.0.0.1:0\"\nclient_keys: [")
	for i, k := range keys {
		if i > 0 {
			y.WriteString(", ")
		}
		fmt.Fprintf(&y, "%q", k)
	}
	fmt.Fprintf(&y, "]\nstream_idle_timeout: %s\nupstreams:\n", s.streamIdle)
	for _, u := range s.upstreams {
		timeout := cmp.Or(u.timeout, "60s")
		fmt.Fprintf(&y, "  - {name: %s, base_url: %q, timeout: %s, connect_timeout: %s", u.name, u.url, timeout, timeout)
		if u.key != "" {
			fmt.Fprintf(&y, ", api_key: %q", u.key)
		}
		y.WriteString("}\n")
	}
	y.WriteString("models:\n")
	writeModel := func(name string, route []string) {
		fmt.Fprintf(&y, "  - name: %s\n    route: [%s]\n    price: {input_per_mtok: 1, output_per_mtok: 2}\n    reference_price: {input_per_mtok: 4, output_per_mtok: 8}\n",
			name, strings.Join(route, ", "))
	}
	writeModel("m", s.route)
	names := make([]string, 0, len(s.models))
	for n := range s.models {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		writeModel(n, s.models[n])
	}
	fmt.Fprintf(&y, "retry: {attempts: %d, backoff_min: 1ms, backoff_max: %s}\n", s.attempts, s.backoffMax)
	fmt.Fprintf(&y, "circuit_breaker: {failures: %d, cooldown: %s}\n", s.breakerFailures, s.breakerCooldown)
	y.WriteString("gpu: {interval: 1h}\n")
	y.WriteString(s.extra)
	return y.String()
}

func parseConfig(t testing.TB, doc string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("config: %v\n%s", err, doc)
	}
	return cfg
}

// gateway is a whole gateway, as app.New assembles it, on a loopback port.
type gateway struct {
	URL   string
	app   *app.App
	srv   *httptest.Server
	conns *connTracker
}

// startGateway builds and serves a gateway for doc. Its logs go to logs
// (discarded when nil), as JSON lines like the command writes.
func startGateway(t testing.TB, doc string, logs io.Writer) *gateway {
	t.Helper()
	if logs == nil {
		logs = io.Discard
	}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// go-redis has one logger per process; the suite's tests run one at a
	// time, so the latest gateway's log takes it, as in the command.
	app.RouteRedisLogs(log)
	a, err := app.New(context.Background(), parseConfig(t, doc), log)
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("app.Close: %v", err)
		}
	})
	srv, tr := serve(t, a.Handler(), logs)
	return &gateway{URL: srv.URL, app: a, srv: srv, conns: tr}
}

// newClient returns a client whose keep-alive pool holds a connection per
// worker, so a load run reuses connections instead of churning through
// ephemeral ports.
func newClient(t testing.TB, workers int) *http.Client {
	t.Helper()
	tr := &http.Transport{
		MaxIdleConnsPerHost: workers,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: guard}
}

// chat builds a chat completion request for model m. A stream asks for
// usage itself half of the time, so both ways the gateway handles usage
// events are exercised.
func chat(ctx context.Context, baseURL, key, model string, stream bool, prompt string) *http.Request {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}]`, model, prompt)
	if stream {
		body += `,"stream":true`
		if len(prompt)%2 == 0 {
			body += `,"stream_options":{"include_usage":true}`
		}
	}
	body += "}"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		panic(err) // a constant URL and method: cannot fail
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return req
}

// reply is what a client got: the status, headers and every byte of the
// body it could read, and the error that ended it early, if any.
type reply struct {
	status int
	header http.Header
	body   []byte
	err    error
	took   time.Duration
}

func (r reply) String() string {
	b := r.body
	if len(b) > 300 {
		b = append(b[:300:300], "…"...)
	}
	if r.err != nil {
		return fmt.Sprintf("status %d, error %v, after %s, body %q", r.status, r.err, r.took.Round(time.Millisecond), b)
	}
	return fmt.Sprintf("status %d, after %s, body %q", r.status, r.took.Round(time.Millisecond), b)
}

func do(c *http.Client, req *http.Request) reply {
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return reply{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: b, err: err, took: time.Since(start)}
}

// wholeChat checks a non-streamed answer: 200 and a chat.completion with
// content.
func wholeChat(r reply) error {
	if r.err != nil || r.status != http.StatusOK {
		return fmt.Errorf("not a whole answer: %s", r)
	}
	var c struct {
		Object  string `json:"object"`
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(r.body, &c); err != nil || c.Object != "chat.completion" || len(c.Choices) == 0 || c.Choices[0].Message.Content == "" {
		return fmt.Errorf("not a chat.completion (%v): %s", err, r)
	}
	return nil
}

// wholeStream checks a streamed answer: 200, Server-Sent Events that are
// all JSON chunks, ending with data: [DONE].
func wholeStream(r reply) error {
	if r.err != nil || r.status != http.StatusOK {
		return fmt.Errorf("not a whole stream: %s", r)
	}
	if !strings.HasPrefix(r.header.Get("Content-Type"), "text/event-stream") {
		return fmt.Errorf("Content-Type %q: %s", r.header.Get("Content-Type"), r)
	}
	if !bytes.HasSuffix(r.body, []byte("data: [DONE]\n\n")) {
		return fmt.Errorf("stream does not end with [DONE]: %s", r)
	}
	content := 0
	for _, ev := range strings.Split(strings.TrimSuffix(string(r.body), "\n\n"), "\n\n") {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok {
			return fmt.Errorf("event %q is not a data event: %s", ev, r)
		}
		if data == "[DONE]" {
			continue
		}
		var c struct {
			Object  string `json:"object"`
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil || c.Object != "chat.completion.chunk" {
			return fmt.Errorf("event %q is not a chunk (%v)", data, err)
		}
		if len(c.Choices) > 0 {
			content += len(c.Choices[0].Delta.Content)
		}
	}
	if content == 0 {
		return fmt.Errorf("stream carried no content: %s", r)
	}
	return nil
}

// apiError is an error body in OpenAI's shape.
type apiError struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Code    string `json:"code"`
}

// openAIError decodes an error answer, failing unless it is in OpenAI's
// shape: {"error":{"message":…,"type":…,"code":…}} as application/json.
func openAIError(r reply) (apiError, error) {
	if r.err != nil {
		return apiError{}, fmt.Errorf("no whole answer: %s", r)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return apiError{}, fmt.Errorf("error answer is %q, not JSON: %s", ct, r)
	}
	var e struct {
		Error *apiError `json:"error"`
	}
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error == nil || e.Error.Message == "" || e.Error.Type == "" || e.Error.Code == "" {
		return apiError{}, fmt.Errorf("not an OpenAI error body (%v): %s", err, r)
	}
	return *e.Error, nil
}

// progress counts finished requests and lets the test wait for a count.
type progress struct {
	mu      sync.Mutex
	n       int
	waiters []progressWaiter
}

type progressWaiter struct {
	at int
	ch chan struct{}
}

func (p *progress) add() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	kept := p.waiters[:0]
	for _, w := range p.waiters {
		if p.n >= w.at {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	p.waiters = kept
}

func (p *progress) reached(n int) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	ch := make(chan struct{})
	if p.n >= n {
		close(ch)
		return ch
	}
	p.waiters = append(p.waiters, progressWaiter{n, ch})
	return ch
}

// loadSpec is a bounded load run: requests requests from workers clients,
// each request judged as it finishes.
type loadSpec struct {
	requests, workers int
	// request builds request i.
	request func(ctx context.Context, i int) *http.Request
	// judge names the outcome of request i: "ok" or a failure category
	// (categories starting with "ok" are successes kept apart).
	judge func(i int, r reply) string
}

// tally counts outcomes by category, with a few examples of each.
type tally struct {
	mu       sync.Mutex
	counts   map[string]int
	examples map[string][]string
	maxTook  time.Duration
}

func (t *tally) add(category string, r reply) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counts == nil {
		t.counts, t.examples = map[string]int{}, map[string][]string{}
	}
	t.counts[category]++
	if !strings.HasPrefix(category, "ok") && len(t.examples[category]) < 3 {
		t.examples[category] = append(t.examples[category], r.String())
	}
	t.maxTook = max(t.maxTook, r.took)
}

func (t *tally) get(category string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.counts[category]
}

func (t *tally) total() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.counts {
		n += c
	}
	return n
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	keys := make([]string, 0, len(t.counts))
	for k := range t.counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%d ", k, t.counts[k])
	}
	for _, k := range keys {
		for _, ex := range t.examples[k] {
			fmt.Fprintf(&b, "\n  %s: %s", k, ex)
		}
	}
	return strings.TrimSpace(b.String())
}

// onlyOK fails the test unless every request was judged ok.
func (t *tally) onlyOK(tb testing.TB, what string) {
	tb.Helper()
	if n := t.total(); t.get("ok") != n {
		tb.Errorf("%s: %d of %d requests failed: %s", what, n-t.get("ok"), n, t)
	}
}

// load is a running loadSpec.
type load struct {
	progress progress
	tally    tally
	done     chan struct{}
	cancel   context.CancelFunc
}

// startLoad runs spec in the background; wait collects it. The run's
// context ends with the test's guard, so a hung gateway fails the test
// instead of hanging it.
func startLoad(t testing.TB, c *http.Client, spec loadSpec) *load {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*guard)
	l := &load{done: make(chan struct{}), cancel: cancel}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range spec.workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= spec.requests || ctx.Err() != nil {
					return
				}
				r := do(c, spec.request(ctx, i))
				l.tally.add(spec.judge(i, r), r)
				l.progress.add()
			}
		})
	}
	go func() { wg.Wait(); close(l.done) }()
	t.Cleanup(func() { cancel(); <-l.done })
	return l
}

// waitFor blocks until n requests have finished.
func (l *load) waitFor(t testing.TB, n int) {
	t.Helper()
	select {
	case <-l.progress.reached(n):
	case <-l.done:
		t.Fatalf("the load ended after %d requests, before %d", l.tally.total(), n)
	case <-time.After(3 * guard):
		t.Fatalf("%d requests did not finish within %s: %s", n, 3*guard, &l.tally)
	}
}

// wait blocks until every request has finished and returns the tally.
func (l *load) wait(t testing.TB) *tally {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(3 * guard):
		l.cancel()
		<-l.done
		t.Fatalf("the load did not finish within %s: %s", 3*guard, &l.tally)
	}
	return &l.tally
}

// dialGuarded connects to addr with its reads and writes bounded by guard,
// for tests that speak raw bytes; the caller closes it.
func dialGuarded(t testing.TB, addr string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, guard)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	if err := conn.SetDeadline(time.Now().Add(guard)); err != nil {
		_ = conn.Close()
		t.Fatal(err)
	}
	return conn
}

// waitUntil polls cond until it holds, failing the test after guard. Used
// only where no signal exists to wait on (counters of another component).
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, guard, what, cond)
}
