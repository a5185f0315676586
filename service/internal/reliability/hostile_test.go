package reliability

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// rawExchange sends head (a request line and headers, and maybe a body) as
// bytes on a new connection, then the rest of the body written by body
// (nil: none), and reads the answer while the body is still being written:
// a gateway that refuses a huge body must answer without reading it all.
// Raw bytes are needed because net/http's client refuses to send much of
// what a hostile client would.
func rawExchange(t testing.TB, addr, head string, body func(io.Writer) error) reply {
	t.Helper()
	conn := dialGuarded(t, addr)
	defer conn.Close()
	start := time.Now()
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatalf("write head: %v", err)
	}
	var wg sync.WaitGroup
	if body != nil {
		wg.Go(func() {
			// The gateway may hang up mid-body once it has answered:
			// the write error is expected then, and the answer is what
			// the test checks.
			_ = body(conn)
		})
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		_ = conn.Close()
		wg.Wait()
		return reply{err: err, took: time.Since(start)}
	}
	b, err := io.ReadAll(resp.Body)
	_ = conn.Close() // ends the body writer, if it is still going
	wg.Wait()
	return reply{status: resp.StatusCode, header: resp.Header, body: b, err: err, took: time.Since(start)}
}

// head is a raw request head: lines joined by CRLF, then the blank line.
func head(lines ...string) string { return strings.Join(lines, "\r\n") + "\r\n\r\n" }

// post is a raw, authenticated POST with a Content-Length body.
func post(path, body string, headers ...string) string {
	return head(append([]string{"POST " + path + " HTTP/1.1", "Host: gateway", "Authorization: Bearer " + clientKey,
		"Content-Type: application/json", fmt.Sprintf("Content-Length: %d", len(body))}, headers...)...) + body
}

// announce is a raw, authenticated POST head whose body follows separately.
func announce(framing string) string {
	return head("POST /v1/chat/completions HTTP/1.1", "Host: gateway", "Authorization: Bearer "+clientKey, framing)
}

// zeros writes n bytes of a JSON string's inside ("aaaa…") in 64 KiB
// pieces from one buffer: the test never holds the whole body.
func zeros(n int64, chunked bool) func(io.Writer) error {
	return func(w io.Writer) error {
		piece := []byte(strings.Repeat("a", 64<<10))
		if chunked {
			const start = `{"model":"m","messages":[{"role":"user","content":"`
			if _, err := fmt.Fprintf(w, "%x\r\n%s\r\n", len(start), start); err != nil {
				return err
			}
		}
		for n > 0 {
			p := piece[:min(int64(len(piece)), n)]
			if chunked {
				if _, err := fmt.Fprintf(w, "%x\r\n", len(p)); err != nil {
					return err
				}
			}
			if _, err := w.Write(p); err != nil {
				return err
			}
			if chunked {
				if _, err := io.WriteString(w, "\r\n"); err != nil {
					return err
				}
			}
			n -= int64(len(p))
		}
		return nil
	}
}

func nested(depth int, open, close string) string {
	return strings.Repeat(open, depth) + strings.Repeat(close, depth)
}

var freshRequestID = regexp.MustCompile(`^[0-9a-f]{32}$`)

// TestHostileRequests sends what a broken or malicious client would. Each
// gets the right 4xx in OpenAI's shape (or, for bytes net/http itself
// refuses, its plain 400 before the gateway sees them), none reaches the
// upstream, and a normal request succeeds after each one.
func TestHostileRequests(t *testing.T) {
	sim := startSim(t, simAnswer(upstreamsim.Config{}))
	logs := &testenv.SyncBuffer{}
	// max_body_bytes stays at its 10 MiB default.
	gw := startGateway(t, viaSim(sim).yaml(), logs)
	addr := strings.TrimPrefix(gw.URL, "http://")
	c := newClient(t, 1)
	normal := 0
	healthy := func(t *testing.T) {
		t.Helper()
		normal++
		if err := wholeChat(do(c, chat(context.Background(), gw.URL, clientKey, "m", false, "still there?"))); err != nil {
			t.Fatalf("the gateway does not serve after the hostile request: %v", err)
		}
	}

	const valid = `{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5}`
	type hostile struct {
		name string
		head string
		body func(io.Writer) error
		// status and code the answer must carry; code "" means net/http
		// refuses the bytes itself with a plain 400.
		status int
		code   string
		// upstream: the request is valid for the gateway, which passes
		// it on; the upstream's answer is the right one.
		upstream bool
	}
	cases := []hostile{
		{name: "malformed JSON", head: post("/v1/chat/completions", `{"model":"m",}`), status: 400, code: "invalid_json"},
		{name: "empty body", head: post("/v1/chat/completions", ``), status: 400, code: "invalid_json"},
		{name: "not an object", head: post("/v1/chat/completions", `[{"model":"m"}]`), status: 400, code: "invalid_json"},
		{name: "a bare string", head: post("/v1/chat/completions", `"model"`), status: 400, code: "invalid_json"},
		{name: "null", head: post("/v1/chat/completions", `null`), status: 400, code: "invalid_json"},
		{name: "trailing garbage", head: post("/v1/chat/completions", valid+`}`), status: 400, code: "invalid_json"},
		{name: "two documents", head: post("/v1/chat/completions", valid+valid), status: 400, code: "invalid_json"},
		{name: "model is a number", head: post("/v1/chat/completions", `{"model":5,"messages":[{"role":"user","content":"x"}]}`), status: 400, code: "invalid_type"},
		{name: "model is null", head: post("/v1/chat/completions", `{"model":null,"messages":[{"role":"user","content":"x"}]}`), status: 400, code: "invalid_type"},
		{name: "model is an object", head: post("/v1/chat/completions", `{"model":{"name":"m"},"messages":[{"role":"user","content":"x"}]}`), status: 400, code: "invalid_type"},
		{name: "messages is a string", head: post("/v1/chat/completions", `{"model":"m","messages":"hi"}`), status: 400, code: "invalid_type"},
		{name: "messages is an object", head: post("/v1/chat/completions", `{"model":"m","messages":{"role":"user"}}`), status: 400, code: "invalid_type"},
		{name: "messages is empty", head: post("/v1/chat/completions", `{"model":"m","messages":[]}`), status: 400, code: "missing_messages"},
		{name: "stream is a string", head: post("/v1/chat/completions", `{"model":"m","stream":"true","messages":[{"role":"user","content":"x"}]}`), status: 400, code: "invalid_type"},
		{name: "stream is a number", head: post("/v1/chat/completions", `{"model":"m","stream":1,"messages":[{"role":"user","content":"x"}]}`), status: 400, code: "invalid_type"},
		{name: "stream_options is a string", head: post("/v1/chat/completions", `{"model":"m","stream":true,"stream_options":"x","messages":[{"role":"user","content":"x"}]}`), status: 400, code: "invalid_type"},
		{name: "model missing", head: post("/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}]}`), status: 400, code: "missing_model"},
		{name: "embeddings without input", head: post("/v1/embeddings", `{"model":"m"}`), status: 400, code: "missing_input"},
		{name: "unknown model", head: post("/v1/chat/completions", `{"model":"../../etc/passwd","messages":[{"role":"user","content":"x"}]}`), status: 404, code: "model_not_found"},
		{name: "invalid UTF-8 in a value", head: post("/v1/chat/completions", "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}"), status: 400, code: "invalid_json"},
		{name: "invalid UTF-8 in a key", head: post("/v1/chat/completions", "{\"model\":\"m\",\"\xc3\x28\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}"), status: 400, code: "invalid_json"},
		{name: "overlong UTF-8", head: post("/v1/chat/completions", "{\"model\":\"m\xc0\xaf\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}"), status: 400, code: "invalid_json"},
		{name: "UTF-8 encoded surrogate", head: post("/v1/chat/completions", "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xed\xa0\x80\"}]}"), status: 400, code: "invalid_json"},
		{name: "raw control character in a string", head: post("/v1/chat/completions", "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\x00b\"}]}"), status: 400, code: "invalid_json"},
		// Nesting is refused past 512 levels, before anything recurses
		// into the body: a recursive validator overflows the stack, which
		// kills the process, a few million levels down.
		{name: "100k nested arrays", head: post("/v1/chat/completions", nested(100_000, "[", "]")), status: 400, code: "nesting_too_deep"},
		{name: "100k nested objects without a model", head: post("/v1/chat/completions", strings.Repeat(`{"a":`, 100_000)+"1"+strings.Repeat("}", 100_000)), status: 400, code: "nesting_too_deep"},
		{name: "100k nested arrays in a field the gateway passes on", head: post("/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"x"}],"metadata":`+nested(100_000, "[", "]")+`}`), status: 400, code: "nesting_too_deep"},
		{name: "8 MiB of unclosed arrays", head: post("/v1/chat/completions", `{"model":"m","messages":`+strings.Repeat("[", 8<<20)), status: 400, code: "nesting_too_deep"},
		{name: "nested to the limit in a field the gateway passes on", head: post("/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"x"}],"metadata":`+nested(511, "[", "]")+`}`), upstream: true},
		{name: "100 MiB body announced", status: 413, code: "request_too_large",
			head: announce(fmt.Sprintf("Content-Length: %d", 100<<20)), body: zeros(100<<20, false)},
		{name: "100 MiB body chunked", status: 413, code: "request_too_large",
			head: announce("Transfer-Encoding: chunked"), body: zeros(100<<20, true)},
		{name: "body shorter than announced", status: 400, code: "unreadable_body",
			head: announce("Content-Length: 1000") + `{"model":"m"`,
			body: func(w io.Writer) error {
				// Half-close: the gateway reads EOF 12 bytes into a
				// 1000-byte body.
				if cw, ok := w.(interface{ CloseWrite() error }); ok {
					return cw.CloseWrite()
				}
				return errors.New("no half-close")
			}},
		{name: "path traversal", head: head("GET /v1/../../etc/passwd HTTP/1.1", "Host: gateway"), status: 404, code: "unknown_url"},
		{name: "path traversal after a route", head: head("POST /v1/chat/completions/../../../etc/passwd HTTP/1.1", "Host: gateway", "Content-Length: 0"), status: 404, code: "unknown_url"},
		{name: "encoded path traversal", head: head("GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1", "Host: gateway"), status: 404, code: "unknown_url"},
		{name: "encoded NUL and CRLF in the path", head: head("GET /v1/models%00%0d%0aX-Injected:%201 HTTP/1.1", "Host: gateway"), status: 404, code: "unknown_url"},
		{name: "double slash", head: head("POST //v1/chat/completions HTTP/1.1", "Host: gateway", "Content-Length: 0"), status: 404, code: "unknown_url"},
		{name: "trailing slash", head: head("POST /v1/chat/completions/ HTTP/1.1", "Host: gateway", "Content-Length: 0"), status: 404, code: "unknown_url"},
		{name: "unknown route", head: head("GET /v2/models HTTP/1.1", "Host: gateway"), status: 404, code: "unknown_url"},
		{name: "admin route", head: head("POST /admin/config HTTP/1.1", "Host: gateway", "Content-Length: 0"), status: 404, code: "unknown_url"},
		{name: "GET on completions", head: head("GET /v1/chat/completions HTTP/1.1", "Host: gateway"), status: 405, code: "method_not_allowed"},
		{name: "DELETE on embeddings", head: head("DELETE /v1/embeddings HTTP/1.1", "Host: gateway"), status: 405, code: "method_not_allowed"},
		{name: "PUT on models", head: head("PUT /v1/models HTTP/1.1", "Host: gateway", "Content-Length: 0"), status: 405, code: "method_not_allowed"},
		{name: "OPTIONS on the stream route", head: head("OPTIONS /v1/chat/completions/stream HTTP/1.1", "Host: gateway"), status: 405, code: "method_not_allowed"},
		{name: "made-up method", head: head("BREW /v1/chat/completions HTTP/1.1", "Host: gateway"), status: 405, code: "method_not_allowed"},
		{name: "control character in X-Request-Id", head: post("/v1/chat/completions", valid, "X-Request-Id: a\x01b"), status: 400},
		{name: "no key", head: head("POST /v1/chat/completions HTTP/1.1", "Host: gateway", "Content-Length: 2") + "{}", status: 401, code: "invalid_api_key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rawExchange(t, addr, tc.head, tc.body)
			switch {
			case tc.upstream:
				if err := wholeChat(r); err != nil {
					t.Errorf("a valid request was not passed on: %v", err)
				}
				normal++
			case tc.code == "":
				if r.err != nil || r.status != tc.status {
					t.Errorf("want net/http's own %d: %s", tc.status, r)
				}
			default:
				if r.status != tc.status {
					t.Errorf("status %d, want %d: %s", r.status, tc.status, r)
				}
				if e, err := openAIError(r); err != nil {
					t.Error(err)
				} else if e.Code != tc.code {
					t.Errorf("code %q, want %q: %s", e.Code, tc.code, r)
				}
				if r.status == http.StatusMethodNotAllowed && r.header.Get("Allow") == "" {
					t.Errorf("405 without Allow: %s", r)
				}
				if id := r.header.Get("X-Request-Id"); id == "" {
					t.Errorf("no X-Request-Id on the error answer: %s", r)
				}
			}
			if r.header.Get("X-Injected") != "" {
				t.Errorf("a header was injected into the answer: %v", r.header)
			}
			healthy(t)
		})
	}
	t.Run("truncated JSON, at every byte", func(t *testing.T) {
		for n := range len(valid) {
			r := rawExchange(t, addr, post("/v1/chat/completions", valid[:n]), nil)
			if e, err := openAIError(r); err != nil || r.status != 400 || e.Code != "invalid_json" {
				t.Errorf("%q: want 400 invalid_json (%v): %s", valid[:n], err, r)
			}
		}
		healthy(t)
	})
	if got := sim.Stats().Requests[upstreamsim.EndpointChatCompletions]; got != uint64(normal) {
		t.Errorf("the upstream got %d requests, want only the %d valid ones", got, normal)
	}
}

// TestRequestIDIsSanitised: X-Request-Id ends up in a response header, the
// upstream's request and the log, so one that is not a plain token is
// replaced rather than echoed.
func TestRequestIDIsSanitised(t *testing.T) {
	sim := startSim(t, simAnswer(upstreamsim.Config{}))
	logs := &testenv.SyncBuffer{}
	gw := startGateway(t, viaSim(sim).yaml(), logs)
	addr := strings.TrimPrefix(gw.URL, "http://")
	const valid = `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
	cases := []struct{ name, id string }{
		{"spaces", "abc def"},
		{"tab", "abc\tdef"},
		{"HTML", "<script>alert(1)</script>"},
		{"quotes and JSON", `x","level":"ERROR","msg":"forged`},
		{"non-ASCII", "idé-ñ"},
		{"encoded CRLF", "abc%0d%0aX-Injected:%201"},
		{"over 128 bytes", strings.Repeat("a", 129)},
		{"8 KiB", strings.Repeat("b", 8<<10)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rawExchange(t, addr, post("/v1/chat/completions", valid, "X-Request-Id: "+tc.id), nil)
			if err := wholeChat(r); err != nil {
				t.Fatal(err)
			}
			if got := r.header.Get("X-Request-Id"); !freshRequestID.MatchString(got) {
				t.Errorf("X-Request-Id %q: want a fresh id instead of the client's", got)
			}
			if r.header.Get("X-Injected") != "" {
				t.Errorf("a header was injected into the answer: %v", r.header)
			}
		})
	}
	if strings.Contains(logs.String(), "forged") || strings.Contains(logs.String(), "<script>") {
		t.Errorf("a client's X-Request-Id reached the log")
	}
	if got := rawExchange(t, addr, post("/v1/chat/completions", valid, "X-Request-Id: trace-42.a_b:c/d+e="), nil); got.header.Get("X-Request-Id") != "trace-42.a_b:c/d+e=" {
		t.Errorf("a sane client id was not kept: %s", got)
	}
}

// TestHugeBodyIsNotHeldInMemory: a 100 MiB body is refused after the
// gateway's limit, not read or allocated whole.
func TestHugeBodyIsNotHeldInMemory(t *testing.T) {
	sim := startSim(t, simAnswer(upstreamsim.Config{}))
	gw := startGateway(t, viaSim(sim).yaml(), nil)
	addr := strings.TrimPrefix(gw.URL, "http://")
	for _, chunked := range []bool{false, true} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		h := announce(fmt.Sprintf("Content-Length: %d", 100<<20))
		if chunked {
			h = announce("Transfer-Encoding: chunked")
		}
		r := rawExchange(t, addr, h, zeros(100<<20, chunked))
		runtime.ReadMemStats(&after)
		if r.status != http.StatusRequestEntityTooLarge {
			t.Fatalf("chunked %t: %s", chunked, r)
		}
		// Reading up to the 10 MiB limit in doubling buffers allocates a
		// few times the limit; the whole body would be over 100 MiB.
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 80<<20 {
			t.Errorf("chunked %t: %d MiB allocated to refuse a 100 MiB body", chunked, alloc>>20)
		}
	}
}

// TestAnnouncedBodySizeDoesNotPinMemory: a client that announces a body of
// max_body_bytes and then sends nothing must not make the gateway hold that
// much memory for as long as it keeps the connection open; otherwise a few
// hundred idle connections exhaust the host's memory at no cost to the
// client. Memory may follow the bytes received, not the bytes announced.
func TestAnnouncedBodySizeDoesNotPinMemory(t *testing.T) {
	const limit = 8 << 20
	const conns = 16
	sim := startSim(t, simAnswer(upstreamsim.Config{}))
	spec := viaSim(sim)
	spec.extra = fmt.Sprintf("max_body_bytes: %d\n", limit)
	gw := startGateway(t, spec.yaml(), nil)
	addr := strings.TrimPrefix(gw.URL, "http://")

	var before, during runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range conns {
		conn, err := net.DialTimeout("tcp", addr, guard)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		if _, err := io.WriteString(conn, announce(fmt.Sprintf("Content-Length: %d", limit))+"{"); err != nil {
			t.Fatal(err)
		}
	}
	// Every handler is waiting for the rest of its body.
	waitUntil(t, "every request is reading its body", func() bool {
		buf := make([]byte, 1<<20)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "gateway.readBody(") == conns
	})
	runtime.GC()
	runtime.ReadMemStats(&during)
	held := int64(during.HeapAlloc) - int64(before.HeapAlloc)
	if held > conns*limit/4 {
		t.Errorf("%d connections that each sent 1 byte of an announced %d MiB body hold %d MiB of heap; "+
			"readBody allocates the announced Content-Length up front", conns, limit>>20, held>>20)
	}
}
