package gateway

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
)

const textKey = "sk-text-K3y9QwErTy77"

// hasRun reports whether s holds 8 or more characters of textKey in a row.
func hasRun(s string) bool {
	for i := 0; i+keyRun <= len(textKey); i++ {
		if strings.Contains(s, textKey[i:i+keyRun]) {
			return true
		}
	}
	return false
}

func TestScrubErrorText(t *testing.T) {
	cases := []struct {
		name, in string
		limit    int
		cut      bool
		want     string
	}{
		{"no key", "overloaded", 200, false, "overloaded"},
		{"whole key", "bad key " + textKey + " sent", 200, false, "bad key [redacted] sent"},
		// The old order (cut at 200, then redact) left "sk-text-K3".
		{"key across the cut", strings.Repeat("x", 190) + textKey + " and more", 200, false, strings.Repeat("x", 190) + "[redacted]…"},
		{"masked key", "Incorrect API key provided: sk-text-K3y9************77", 200, false, "Incorrect API key provided: [redacted]************77"},
		{"key's end", "key ending in " + textKey[6:], 200, false, "key ending in [redacted]"},
		{"read cut in the key", "prefix " + textKey[:6], 0, true, "prefix [redacted]"},
		{"not cut: the same text stays", "prefix " + textKey[:6], 0, false, "prefix " + textKey[:6]},
		{"control characters", "a\nb\x00c\x7f", 0, false, "abc"},
		{"cut on a character boundary", "ééé", 3, false, "é…"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := scrubErrorText(tc.in, textKey, tc.limit, tc.cut)
			if got != tc.want {
				t.Errorf("scrubErrorText(%q) = %q, want %q", tc.in, got, tc.want)
			}
			if hasRun(got) {
				t.Errorf("%q keeps a run of the key", got)
			}
		})
	}
	if got := scrubErrorText("short key abc", "abc", 0, false); got != "short key abc" {
		t.Errorf("a key under %d characters is not looked for: %q", minKeyForErrors, got)
	}
}

func TestRedactAnswer(t *testing.T) {
	key := []byte(textKey)
	clean := []byte(`{"content":"nothing to see"}`)
	if got := redactAnswer(clean, key); &got[0] != &clean[0] {
		t.Error("an answer without the key was copied")
	}
	if n := testing.AllocsPerRun(100, func() { redactAnswer(clean, key) }); n != 0 {
		t.Errorf("an answer without the key costs %v allocations", n)
	}
	got := string(redactAnswer([]byte(`{"a":"`+textKey+`","b":"`+textKey+`"}`), key))
	if got != `{"a":"[redacted]","b":"[redacted]"}` {
		t.Errorf("got %s", got)
	}
	if got := redactAnswer([]byte("abcdefg"), []byte("abcdefg")); string(got) != "abcdefg" {
		t.Errorf("a key under %d characters was removed from an answer: %s", minKeyForAnswers, got)
	}
}

func TestHasKeyPiece(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want bool
	}{
		{"req_0123456789abcdef", false},
		{textKey, true},
		{"id-" + textKey[8:] + "-x", true},
		{"application/json", false},
		{"application/json; k=" + textKey[:16], true},
	} {
		if got := hasKeyPiece(tc.v, textKey); got != tc.want {
			t.Errorf("hasKeyPiece(%q) = %t, want %t", tc.v, got, tc.want)
		}
	}
}

func TestDescribeTransport(t *testing.T) {
	reset := &net.OpError{Op: "read", Net: "tcp", Source: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 35408},
		Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 43729}, Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	refused := &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 443},
		Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	cases := []struct {
		err  error
		when string
		want string
	}{
		{reset, beforeAnswer, "connection reset by upstream"},
		{fmt.Errorf("wrapped: %w", reset), midAnswer, "connection reset by upstream mid-answer"},
		{refused, beforeAnswer, "connection refused by upstream"},
		{io.EOF, beforeAnswer, "upstream closed the connection before answering"},
		{io.ErrUnexpectedEOF, midAnswer, "upstream closed the connection mid-answer"},
		{io.ErrUnexpectedEOF, beforeFirstEvent, "upstream closed the connection before the stream's first event"},
		{&net.DNSError{Err: "no such host", Name: "relay.internal"}, beforeAnswer, "upstream host name could not be resolved"},
		{errors.New(`net/http: HTTP/1.x transport connection broken: malformed HTTP response "\x00\x00"`), beforeAnswer, "upstream sent a malformed HTTP answer"},
		{errors.New("something else at 10.1.2.3:8443"), beforeAnswer, "connection to upstream failed"},
	}
	for _, tc := range cases {
		f := describeTransport(tc.err, tc.when)
		if f.Error() != tc.want {
			t.Errorf("describeTransport(%v) = %q, want %q", tc.err, f.Error(), tc.want)
		}
		if !errors.Is(f, tc.err) {
			t.Errorf("describeTransport(%v) hides its cause from errors.Is", tc.err)
		}
	}
}

// TestUpstreamErrorMessageRedactsBeforeCutting: the key is gone from what
// the client and /health are shown, wherever the upstream put it.
func TestUpstreamErrorMessageRedactsBeforeCutting(t *testing.T) {
	body := func(msg string) string { return `{"error":{"message":"` + msg + `"}}` }
	for _, tc := range []struct{ name, body string }{
		{"key across the 200-character cut", body(strings.Repeat("x", 195) + textKey)},
		// Found in the decoded message, not in the bytes.
		{"escaped in JSON", body(escapeAll(textKey))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := upstreamErrorMessage(strings.NewReader(tc.body), textKey)
			if hasRun(got) {
				t.Errorf("%q", got)
			}
		})
	}
}

// escapeAll writes every character of s as a JSON \u escape.
func escapeAll(s string) string {
	var b strings.Builder
	for _, r := range s {
		fmt.Fprintf(&b, `\u%04x`, r)
	}
	return b.String()
}

// TestErrorsHideTransportDetails: a reset before the answer and one in the
// middle of it reach the client as words, without addresses.
func TestErrorsHideTransportDetails(t *testing.T) {
	up := newFakeUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n%2 == 1 {
			cutConnection(w)
			return
		}
		w.Header().Set("Content-Length", "1000")
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":`)
		w.(http.Flusher).Flush()
		cutConnection(w)
	})
	srv, _, _ := newGateway(t, gwOpts{attempts: 1}, up)
	for i := range 2 {
		res := post(t, srv.URL, "/v1/chat/completions", chatBody)
		msg, _, _ := openAIError(t, res.body)
		if res.status != http.StatusBadGateway || strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, "tcp") || strings.Contains(msg, "EOF") {
			t.Errorf("attempt %d: %d %s", i, res.status, msg)
		}
		if !strings.Contains(msg, "upstream closed the connection") && !strings.Contains(msg, "connection reset by upstream") {
			t.Errorf("attempt %d does not say what happened: %s", i, msg)
		}
	}
}

// BenchmarkRedactAnswer is what looking for the key costs a stream's batch
// of events (the relay's added work per read) when it is not there.
func BenchmarkRedactAnswer(b *testing.B) {
	events := []byte(strings.Repeat(benchEvent("Hello"), 8))
	key := []byte("sk-upstream-key-0123456789abcdef")
	b.ReportAllocs()
	b.SetBytes(int64(len(events)))
	for b.Loop() {
		if out := redactAnswer(events, key); len(out) != len(events) {
			b.Fatal("changed")
		}
	}
}
