package reliability

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaygate/relaygate/service/internal/cache"
	"github.com/relaygate/relaygate/service/internal/testenv"
)

// hostileKey is the gateway's key for the hostile upstream. It shares no
// run of characters with anything else the suite sends, so any 8 of its
// characters in a row, wherever they turn up, are a leak.
const hostileKey = "sk-hostile-Q7x9LmZ2pW4vN8kR3tY6"

// keyFragment returns the first run of at least 8 characters of the
// hostile key found in text ("" when there is none): a key cut short by a
// truncation leaks as surely as a whole one.
func keyFragment(text string) string {
	const n = 8
	for i := 0; i+n <= len(hostileKey); i++ {
		if strings.Contains(text, hostileKey[i:i+n]) {
			return hostileKey[i : i+n]
		}
	}
	return ""
}

// leakedTransport matches what must stay inside the gateway: addresses,
// ports, the names of Go's network calls and its parsers' messages.
var leakedTransport = regexp.MustCompile(`\b\d{1,3}(\.\d{1,3}){3}\b|\[::1\]|:\d{4,5}\b|\b(read|write|dial) tcp\b|unexpected EOF|invalid character|looking for beginning|connection reset by peer|broken pipe|Post "|http: `)

// hostileUpstream attacks the gateway through its answers. The model name
// the gateway sends it (a route entry renames "m" per model) picks the
// attack, so one server plays them all.
type hostileUpstream struct {
	base  string
	calls sync.Map // attack → *atomic.Int64
	// release lets the "hold" attack finish its answer; cut tells
	// "cut-mid-stream" that its first event has reached the client.
	release, cut chan struct{}
	// large is the body of the "large" attack, shared by every request.
	large     []byte
	embedOnce sync.Once
	embed     []byte
}

// hostileRoute is the route entry that sends model traffic to attack.
func hostileRoute(upstream, attack string) []string {
	return []string{fmt.Sprintf("{upstream: %s, model: %s}", upstream, attack)}
}

func startHostile(t testing.TB) *hostileUpstream {
	t.Helper()
	h := &hostileUpstream{release: make(chan struct{}), cut: make(chan struct{})}
	srv, _ := serve(t, http.HandlerFunc(h.serve), nil)
	// Handlers blocked in "hold" or "huge-content-length" end with the
	// test, before the server's Close waits for them.
	testenv.CloseAtEnd(t, h.release)
	h.base = srv.URL + "/v1"
	return h
}

func (h *hostileUpstream) count(attack string) int64 {
	c, _ := h.calls.LoadOrStore(attack, new(atomic.Int64))
	return c.(*atomic.Int64).Load()
}

// padTo190 puts the key's first characters at offset 190 of a message, so
// a cut at 200 characters (the gateway's old order: cut, then redact)
// would leave 10 of them.
func padTo190(s string) string { return strings.Repeat("x", 190-len(s)) + s }

func completionWith(content string, prompt, completion int64) string {
	c, _ := json.Marshal(content)
	return fmt.Sprintf(`{"id":"chatcmpl-h","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":%s},"finish_reason":"stop"}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`,
		c, prompt, completion, prompt+completion)
}

func sseChunk(content string) string {
	c, _ := json.Marshal(content)
	return fmt.Sprintf("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%s},\"finish_reason\":null}]}\n\n", c)
}

// rst closes conn with a TCP reset rather than a FIN.
func rst(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

func (h *hostileUpstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var req struct {
		Model string `json:"model"`
	}
	_ = json.Unmarshal(body, &req)
	c, _ := h.calls.LoadOrStore(req.Model, new(atomic.Int64))
	c.(*atomic.Int64).Add(1)
	key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	fl := w.(http.Flusher)
	jsonError := func(code int, msg string) {
		m, _ := json.Marshal(msg)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"error":{"message":%s,"type":"server_error","code":null}}`, m)
	}
	hijack := func() (net.Conn, *bufio.ReadWriter) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		return conn, rw
	}
	switch req.Model {
	case "long-error-503":
		jsonError(http.StatusServiceUnavailable, padTo190("overloaded; you sent ")+key+" and more words after it, well past two hundred characters")
	case "long-error-404":
		jsonError(http.StatusNotFound, padTo190("no such model for key ")+key+" and more words after it, well past two hundred characters")
	case "long-error-400-html":
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, padTo190("<html><body>bad request from ")+key+" and more words after it, well past two hundred characters</body></html>")
	case "key-in-answer":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, completionWith("your key is "+key+", keep it safe", 10, 5))
	case "key-in-header":
		w.Header().Set("X-Request-Id", key)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, completionWith("hello", 10, 5))
	case "key-in-stream":
		// The key is split over two writes, each flushed: the gateway
		// may read it in two pieces.
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, sseChunk("hello "))
		fl.Flush()
		ev := sseChunk("your key is " + key)
		half := strings.Index(ev, key) + len(key)/2
		io.WriteString(w, ev[:half])
		fl.Flush()
		io.WriteString(w, ev[half:])
		io.WriteString(w, "data: [DONE]\n\n")
	case "html":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, "<html><body>Service temporarily unavailable (captive portal)</body></html>")
	case "not-a-completion":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"status":"ok","note":"this is not a chat.completion"}`)
	case "absurd-usage":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, completionWith("cheap answer", 1<<31-1, 1<<31-1))
	case "absurd-usage-stream":
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, sseChunk("cheap answer"))
		io.WriteString(w, `data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":2147483647,"completion_tokens":2147483647,"total_tokens":4294967294}}`+"\n\n")
		io.WriteString(w, "data: [DONE]\n\n")
	case "over-max-tokens":
		// The request asked for at most 10 tokens.
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, completionWith("a short answer", 12, 500000))
	case "cut-before-answer":
		conn, _ := hijack()
		rst(conn)
	case "cut-mid-answer":
		conn, rw := hijack()
		fmt.Fprintf(rw, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n%s", `{"id":"chatcmpl-h","object":"chat.completion","choices":[`)
		_ = rw.Flush()
		rst(conn)
	case "cut-mid-stream":
		conn, rw := hijack()
		ev := sseChunk("first words ")
		fmt.Fprintf(rw, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(ev), ev)
		_ = rw.Flush()
		// The reset comes once the stream has begun for the client.
		select {
		case <-h.cut:
		case <-time.After(guard):
		}
		rst(conn)
	case "bad-json":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id": chatcmpl-oops, "object": "chat.completion"}`)
	case "huge-content-length":
		conn, rw := hijack()
		defer conn.Close()
		fmt.Fprintf(rw, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"id\":", int64(8)<<30)
		_ = rw.Flush()
		select {
		case <-h.release:
		case <-time.After(guard):
		}
	case "large":
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(h.large)))
		_, _ = w.Write(h.large)
	case "embeddings-max":
		h.embedOnce.Do(func() { h.embed = embeddingsAnswer(2048, 3072) })
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(h.embed)))
		_, _ = w.Write(h.embed)
	case "hold":
		// Announces 900 KiB, sends a ninth of it, and waits.
		b := []byte(completionWith(strings.Repeat("y", 900<<10), 10, 5))
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b[:100<<10])
		fl.Flush()
		select {
		case <-h.release:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(b[100<<10:])
	default:
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, completionWith("a fine answer", 10, 5))
	}
}

// largeCompletion is a valid chat.completion of about size bytes.
func largeCompletion(size int) []byte {
	return []byte(completionWith(strings.Repeat("z", size), 10, 5))
}

// embeddingsAnswer is OpenAI's answer to the largest embeddings request
// it accepts (inputs vectors of dims floats, as text-embedding-3-large
// writes them): about 20 bytes per float.
func embeddingsAnswer(inputs, dims int) []byte {
	var b bytes.Buffer
	b.Grow(inputs*dims*20 + inputs*64 + 256)
	b.WriteString(`{"object":"list","data":[`)
	for i := range inputs {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"object":"embedding","index":%d,"embedding":[`, i)
		for j := range dims {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString("-0.0069292834959924")
		}
		b.WriteString("]}")
	}
	b.WriteString(`],"model":"text-embedding-3-large","usage":{"prompt_tokens":8192,"total_tokens":8192}}`)
	return b.Bytes()
}

// hostileGateway is a gateway whose models each route to one attack of h.
func hostileGateway(t testing.TB, h *hostileUpstream, attacks []string, extra string, logs io.Writer) *gateway {
	t.Helper()
	models := map[string][]string{}
	for _, a := range attacks {
		models[a] = hostileRoute("hostile", a)
	}
	return startGateway(t, gatewaySpec{
		upstreams: []upstreamSpec{{name: "hostile", url: h.base, key: hostileKey}},
		route:     []string{"hostile"},
		models:    models,
		attempts:  1,
		extra:     extra,
	}.yaml(), logs)
}

func healthBody(t testing.TB, gw *gateway) string {
	t.Helper()
	r := do(newClient(t, 1), mustRequest(t, http.MethodGet, gw.URL+"/health", ""))
	if r.status != http.StatusOK {
		t.Fatalf("/health: %s", r)
	}
	return string(r.body)
}

// TestHostileUpstreamKeyNeverLeaks: an upstream that quotes the key it was
// sent — in error messages longer than the gateway's cut, in an HTML error
// page, in a 200 answer, split across a stream's reads, in a header — must
// not get any run of it to the client, /health or the log.
func TestHostileUpstreamKeyNeverLeaks(t *testing.T) {
	h := startHostile(t)
	attacks := []string{"long-error-503", "long-error-404", "long-error-400-html", "key-in-answer", "key-in-header", "key-in-stream"}
	logs := &testenv.SyncBuffer{}
	gw := hostileGateway(t, h, attacks, "log: {level: debug}\n", logs)
	c := newClient(t, 1)
	ctx := context.Background()
	cases := []struct {
		attack string
		stream bool
		want   int
	}{
		{"long-error-404", false, http.StatusNotFound},
		{"long-error-400-html", false, http.StatusBadRequest},
		{"key-in-answer", false, http.StatusOK},
		{"key-in-header", false, http.StatusOK},
		{"key-in-stream", true, http.StatusOK},
		// Last, so that /health's last_error is its message.
		{"long-error-503", false, http.StatusBadGateway},
	}
	var seen strings.Builder
	for _, tc := range cases {
		t.Run(tc.attack, func(t *testing.T) {
			r := do(c, chat(ctx, gw.URL, clientKey, tc.attack, tc.stream, "x"))
			if r.status != tc.want {
				t.Errorf("status %d, want %d: %s", r.status, tc.want, r)
			}
			if h.count(tc.attack) == 0 {
				t.Fatalf("the attack never reached the hostile upstream: %s", r)
			}
			var text strings.Builder
			for k, v := range r.header {
				fmt.Fprintf(&text, "%s: %s\n", k, strings.Join(v, ", "))
			}
			text.Write(r.body)
			seen.WriteString(text.String())
			if f := keyFragment(text.String()); f != "" {
				t.Errorf("the client got %q of the upstream key: %s", f, text.String())
			}
			if tc.want == http.StatusOK && tc.attack != "key-in-header" && !strings.Contains(string(r.body), "[redacted]") {
				t.Errorf("the answer does not say where the key was removed: %s", r)
			}
		})
	}
	hb := healthBody(t, gw)
	if !strings.Contains(hb, "overloaded") {
		t.Errorf("/health does not show the upstream's last error: %s", hb)
	}
	for where, text := range map[string]string{"/health": hb, "log": logs.String()} {
		if f := keyFragment(text); f != "" {
			i := strings.Index(text, f)
			t.Errorf("%s has %q of the upstream key: …%s…", where, f, text[max(0, i-120):min(len(text), i+60)])
		}
	}
}

// TestHostileUpstreamTransportDetailsStayInside: connections cut and reset
// at every stage, and JSON that does not parse, reach the client as what
// happened in words, never as addresses, ports or Go's error text; the
// same goes for /health.
func TestHostileUpstreamTransportDetailsStayInside(t *testing.T) {
	h := startHostile(t)
	cases := []struct {
		attack string
		stream bool
		want   int
		words  string // what the client must be told
	}{
		{"cut-before-answer", false, http.StatusBadGateway, "connection reset by upstream"},
		{"cut-before-answer", true, http.StatusBadGateway, "connection reset by upstream"},
		{"cut-mid-answer", false, http.StatusBadGateway, "mid-answer"},
		{"cut-mid-stream", true, http.StatusOK, "mid-answer"},
		{"bad-json", true, http.StatusBadGateway, "invalid JSON from upstream"},
	}
	attacks := []string{"cut-before-answer", "cut-mid-answer", "cut-mid-stream", "bad-json"}
	logs := &testenv.SyncBuffer{}
	gw := hostileGateway(t, h, attacks, "", logs)
	c := newClient(t, 1)
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/stream=%t", tc.attack, tc.stream), func(t *testing.T) {
			var r reply
			if tc.attack == "cut-mid-stream" {
				r = cutMidStream(c, gw, h)
			} else {
				r = do(c, chat(context.Background(), gw.URL, clientKey, tc.attack, tc.stream, "x"))
			}
			if r.status != tc.want {
				t.Errorf("status %d, want %d: %s", r.status, tc.want, r)
			}
			if m := leakedTransport.FindString(string(r.body)); m != "" {
				t.Errorf("the client was shown %q: %s", m, r.body)
			}
			if !strings.Contains(string(r.body), tc.words) {
				t.Errorf("the client was not told %q: %s", tc.words, r.body)
			}
		})
	}
	hb := healthBody(t, gw)
	if !strings.Contains(hb, "last_error") {
		t.Errorf("/health shows no last_error after the failures: %s", hb)
	}
	if m := leakedTransport.FindString(hb); m != "" {
		t.Errorf("/health shows %q: %s", m, hb)
	}
}

// cutMidStream reads the stream of "cut-mid-stream" up to its first event,
// has the upstream reset the connection, and reads the rest.
func cutMidStream(c *http.Client, gw *gateway, h *hostileUpstream) reply {
	resp, err := c.Do(chat(context.Background(), gw.URL, clientKey, "cut-mid-stream", true, "x"))
	if err != nil {
		close(h.cut)
		return reply{err: err}
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	var first []byte
	for !bytes.HasSuffix(first, []byte("\n\n")) {
		line, err := br.ReadBytes('\n')
		first = append(first, line...)
		if err != nil {
			break
		}
	}
	close(h.cut)
	rest, err := io.ReadAll(br)
	return reply{status: resp.StatusCode, header: resp.Header, body: append(first, rest...), err: err}
}

// TestHostileUpstreamHTMLIsNotCached: a 200 that is not the endpoint's
// answer (an HTML page from a captive portal or a proxy, JSON of another
// shape) must not be cached and served to everyone asking the same.
func TestHostileUpstreamHTMLIsNotCached(t *testing.T) {
	rd := testenv.StartRedis(t)
	h := startHostile(t)
	attacks := []string{"html", "not-a-completion"}
	gw := hostileGateway(t, h, attacks, fmt.Sprintf("cache: {redis_url: %q, ttl: 1m, timeout: 1s}\n", rd.URL), nil)
	c := newClient(t, 1)
	det := func(model string) *http.Request {
		req := mustRequest(t, http.MethodPost, gw.URL+"/v1/chat/completions",
			fmt.Sprintf(`{"model":%q,"temperature":0,"messages":[{"role":"user","content":"same question"}]}`, model))
		req.Header.Set("Authorization", "Bearer "+clientKey)
		return req
	}
	for _, model := range []string{"m", "html", "not-a-completion"} {
		t.Run(model, func(t *testing.T) {
			first, second := do(c, det(model)), do(c, det(model))
			if first.status != http.StatusOK || second.status != http.StatusOK {
				t.Fatalf("want 200 twice: %s; %s", first, second)
			}
			hit := second.header.Get("X-Cache") == "HIT"
			if model == "m" {
				// The control: a real chat.completion is cached, so
				// the cache works in this test.
				if !hit {
					t.Fatalf("a chat.completion was not cached: X-Cache %q", second.header.Get("X-Cache"))
				}
				return
			}
			if hit {
				t.Errorf("a %s answer was cached and replayed: %s", model, second)
			}
			if n := h.count(model); n != 2 {
				t.Errorf("the upstream was asked %d times, want 2 (nothing cached)", n)
			}
		})
	}
}

// TestPoisonedCacheEntryIsNotServed: an HTML page already in the cache
// (stored by a replica from before answers were checked) is not replayed;
// the upstream's answer replaces it.
func TestPoisonedCacheEntryIsNotServed(t *testing.T) {
	rd := testenv.StartRedis(t)
	h := startHostile(t)
	gw := hostileGateway(t, h, nil, fmt.Sprintf("cache: {redis_url: %q, ttl: 1m, timeout: 1s}\n", rd.URL), nil)
	c := newClient(t, 1)
	det := func() *http.Request {
		req := mustRequest(t, http.MethodPost, gw.URL+"/v1/chat/completions",
			`{"model":"m","temperature":0,"messages":[{"role":"user","content":"poison me"}]}`)
		req.Header.Set("Authorization", "Bearer "+clientKey)
		return req
	}
	if r := do(c, det()); wholeChat(r) != nil || r.header.Get("X-Cache") != "MISS" {
		t.Fatalf("first answer: %s (X-Cache %q)", r, r.header.Get("X-Cache"))
	}
	// Overwrite what was stored, wherever the cache keeps it.
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	keys, err := rdb.Keys(context.Background(), "*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("want the one stored answer in Redis: %q, %v", keys, err)
	}
	poison, err := cache.New(cache.Options{URL: rd.URL, TTL: time.Minute, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = poison.Close() })
	if err := poison.Set(context.Background(), keys[0], cache.Entry{Body: []byte("<html>captive portal</html>"), ContentType: "text/html", Upstream: "hostile"}); err != nil {
		t.Fatal(err)
	}
	r := do(c, det())
	if err := wholeChat(r); err != nil || r.header.Get("X-Cache") == "HIT" {
		t.Errorf("the poisoned entry was served (X-Cache %q): %v", r.header.Get("X-Cache"), err)
	}
	if n := h.count("m"); n != 2 {
		t.Errorf("the upstream was asked %d times, want 2", n)
	}
	if r := do(c, det()); wholeChat(r) != nil || r.header.Get("X-Cache") != "HIT" {
		t.Errorf("the upstream's answer did not replace the poisoned entry: %s (X-Cache %q)", r, r.header.Get("X-Cache"))
	}
}

// TestHostileUpstreamAbsurdUsage: usage no request could produce (2³¹
// tokens for a one-line prompt, 500,000 completion tokens for max_tokens
// 10) is not billed: it is counted as suspicious and the cost stays put.
func TestHostileUpstreamAbsurdUsage(t *testing.T) {
	h := startHostile(t)
	attacks := []string{"absurd-usage", "absurd-usage-stream", "over-max-tokens"}
	gw := hostileGateway(t, h, attacks, "", nil)
	c := newClient(t, 1)
	ctx := context.Background()
	reg := gw.app.Metrics.Registry
	cost := func(model string) float64 {
		return testenv.MetricValue(t, reg, "relaygate_cost_usd_total", map[string]string{"model": model})
	}

	// The control: an honest answer is billed, 10 prompt and 5
	// completion tokens at $1 and $2 per million.
	if r := do(c, chat(ctx, gw.URL, clientKey, "m", false, "x")); wholeChat(r) != nil {
		t.Fatalf("honest answer: %s", r)
	}
	waitUntil(t, "the honest answer is billed", func() bool { return cost("m") > 0 })
	if got, want := cost("m"), 20e-6; got < want*0.999 || got > want*1.001 {
		t.Errorf("honest answer cost $%g, want $%g", got, want)
	}

	maxTokens := func(req *http.Request, n int) *http.Request {
		b, _ := io.ReadAll(req.Body)
		b = bytes.Replace(b, []byte(`{"model"`), []byte(fmt.Sprintf(`{"max_tokens":%d,"model"`, n)), 1)
		req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
		return req
	}
	for _, tc := range []struct {
		attack string
		req    *http.Request
	}{
		{"absurd-usage", chat(ctx, gw.URL, clientKey, "absurd-usage", false, "x")},
		{"absurd-usage-stream", chat(ctx, gw.URL, clientKey, "absurd-usage-stream", true, "xx")},
		{"over-max-tokens", maxTokens(chat(ctx, gw.URL, clientKey, "over-max-tokens", false, "x"), 10)},
	} {
		t.Run(tc.attack, func(t *testing.T) {
			r := do(c, tc.req)
			if r.status != http.StatusOK {
				t.Fatalf("want the answer passed on: %s", r)
			}
			waitUntil(t, "the request is counted", func() bool {
				return testenv.MetricValue(t, reg, "relaygate_requests_total", map[string]string{"model": tc.attack, "code": "200"}) == 1
			})
			if got := cost(tc.attack); got > 0.01 {
				t.Errorf("one answer added $%.2f to relaygate_cost_usd_total", got)
			}
			if got := testenv.MetricValue(t, reg, "relaygate_tokens_total", map[string]string{"model": tc.attack}); got > 0 {
				t.Errorf("%g tokens counted in relaygate_tokens_total", got)
			}
			if got := testenv.MetricValue(t, reg, "relaygate_usage_suspicious_total", map[string]string{"model": tc.attack}); got != 1 {
				t.Errorf("relaygate_usage_suspicious_total = %g, want 1", got)
			}
		})
	}
}

// heapPeak samples the heap's object bytes until stop is closed and
// returns the highest value seen.
func heapPeak(stop <-chan struct{}) <-chan uint64 {
	out := make(chan uint64, 1)
	go func() {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		var peak uint64
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(s)
			peak = max(peak, s[0].Value.Uint64())
			select {
			case <-stop:
				out <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// rss is the process's resident memory, from /proc (0 where there is none).
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestHostileUpstreamLargeAnswers: the memory that buffered answers take is
// bounded for the whole process, an answer announced larger than any limit
// is refused at once, and the largest legal embeddings answer gets through.
func TestHostileUpstreamLargeAnswers(t *testing.T) {
	h := startHostile(t)
	attacks := []string{"huge-content-length", "embeddings-max"}
	gw := hostileGateway(t, h, attacks, "", nil)

	t.Run("huge Content-Length", func(t *testing.T) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r := do(newClient(t, 1), chat(context.Background(), gw.URL, clientKey, "huge-content-length", false, "x"))
		runtime.ReadMemStats(&after)
		e, err := openAIError(r)
		if err != nil || r.status != http.StatusBadGateway || e.Code != "upstream_answer_too_large" {
			t.Errorf("want a 502 upstream_answer_too_large at once (%v): %s", err, r)
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
			t.Errorf("%d MiB allocated for an answer that never came", alloc>>20)
		}
	})

	t.Run("largest embeddings answer", func(t *testing.T) {
		req := mustRequest(t, http.MethodPost, gw.URL+"/v1/embeddings",
			`{"model":"embeddings-max","input":[`+strings.TrimSuffix(strings.Repeat(`"twelve bytes",`, 2048), ",")+`]}`)
		req.Header.Set("Authorization", "Bearer "+clientKey)
		resp, err := newClient(t, 1).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK || err != nil || n != int64(len(h.embed)) {
			t.Fatalf("want 200 and all %d bytes: status %d, %d bytes, %v", len(h.embed), resp.StatusCode, n, err)
		}
		t.Logf("a %d-byte request for 2048 × 3072 floats: %d MB answered", req.ContentLength, n/1e6)
	})
}

// TestHostileUpstreamMemorySpike: 8 answers of 60 MiB at once take no more
// memory than the budget (256 MiB by default) lets them, and the process
// gives the memory back once they are done.
func TestHostileUpstreamMemorySpike(t *testing.T) {
	const large = 60 << 20
	h := startHostile(t)
	h.large = largeCompletion(large)
	gw := hostileGateway(t, h, []string{"large"}, "", nil)
	debug.FreeOSMemory()
	rssBefore := rss()
	stop := make(chan struct{})
	peak := heapPeak(stop)
	const clients = 8
	c := newClient(t, clients)
	var wg sync.WaitGroup
	results := make([]reply, clients)
	for i := range clients {
		wg.Go(func() {
			resp, err := c.Do(chat(context.Background(), gw.URL, clientKey, "large", false, "x"))
			if err != nil {
				results[i] = reply{err: err}
				return
			}
			defer resp.Body.Close()
			n, err := io.Copy(io.Discard, resp.Body)
			results[i] = reply{status: resp.StatusCode, header: resp.Header, err: err, body: []byte(strconv.FormatInt(n, 10))}
		})
	}
	wg.Wait()
	close(stop)
	p := <-peak
	ok := 0
	for _, r := range results {
		switch {
		case r.status == http.StatusOK && string(r.body) == strconv.Itoa(len(h.large)):
			ok++
		case r.status == http.StatusServiceUnavailable && r.header.Get("Retry-After") != "":
		default:
			t.Errorf("want 200 with the whole answer, or 503 with Retry-After: %s", r)
		}
	}
	if ok == 0 {
		t.Error("no large answer got through")
	}
	// Let the gateway hand memory back after the spike.
	var rssAfter uint64
	deadline := time.Now().Add(5 * time.Second)
	for {
		time.Sleep(250 * time.Millisecond)
		rssAfter = rss()
		if rssAfter < rssBefore+64<<20 || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("%d of %d answers of %d MiB: heap peak %d MiB; RSS %d MiB before, %d MiB after",
		ok, clients, large>>20, p>>20, rssBefore>>20, rssAfter>>20)
	// The default budget is 256 MiB; with the upstream's own copy of
	// the answer and the Go collector's slack, a bounded gateway stays
	// far under what 8 unbounded buffers of 60 MiB take.
	if p > 640<<20 {
		t.Errorf("heap peaked at %d MiB for %d answers of %d MiB", p>>20, clients, large>>20)
	}
	// Under the race detector, its shadow of the heap stays resident.
	if rssAfter > rssBefore+128<<20 && !raceEnabled {
		t.Errorf("RSS still %d MiB after the spike, %d MiB before", rssAfter>>20, rssBefore>>20)
	}
}

// TestHostileUpstreamBufferBudget: while the buffer budget is taken, an
// answer that needs more waits a little, then gets a 503 with Retry-After
// instead of taking memory the process does not have.
func TestHostileUpstreamBufferBudget(t *testing.T) {
	h := startHostile(t)
	gw := startGateway(t, gatewaySpec{
		upstreams: []upstreamSpec{
			{name: "patient", url: h.base, key: hostileKey, timeout: "60s"},
			{name: "quick", url: h.base, key: hostileKey, timeout: "1s"},
		},
		route:    []string{"patient"},
		models:   map[string][]string{"hold": hostileRoute("patient", "hold"), "second": hostileRoute("quick", "hold")},
		attempts: 1,
		extra:    "buffer_budget_bytes: 1048576\n",
	}.yaml(), nil)
	c := newClient(t, 2)
	first := make(chan reply, 1)
	go func() { first <- do(c, chat(context.Background(), gw.URL, clientKey, "hold", false, "x")) }()
	// The first answer's 900 KiB are reserved from its Content-Length as
	// soon as its headers are in.
	waitUntil(t, "the first answer holds its share of the budget", func() bool {
		return testenv.MetricValue(t, gw.app.Metrics.Registry, "relaygate_response_buffer_bytes", nil) >= 900<<10
	})
	r := do(c, chat(context.Background(), gw.URL, clientKey, "second", false, "x"))
	e, err := openAIError(r)
	if err != nil || r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Errorf("want 503 with Retry-After while the budget is taken (%v): %s", err, r)
	} else if !strings.Contains(e.Message, "memory") {
		t.Errorf("the 503 does not say why: %q", e.Message)
	}
	close(h.release)
	if got := <-first; wholeChat(got) != nil {
		t.Errorf("the first answer: %s", got)
	}
}
