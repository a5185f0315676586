package gateway

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"unicode/utf8"
)

// What an upstream sends back is shown to clients, in /health and in the
// log. An upstream may quote the key it was sent (some echo the
// Authorization header in their errors, or a model may repeat it), so its
// key is removed from all of it, before anything is cut short: a cut
// first would leave the start of the key standing.

// redacted replaces a key, or a piece of one, in text an upstream sent.
const redacted = "[redacted]"

var redactedBytes = []byte(redacted)

const (
	// minKeyForAnswers is the shortest key removed from answers (200s and
	// streams): a shorter one would match ordinary text.
	minKeyForAnswers = 8
	// minKeyForErrors is the shortest key removed from error texts.
	minKeyForErrors = 4
	// keyRun is the shortest run of a key's characters treated as a piece
	// of it in error texts: the start of a key an upstream cut short, or
	// one it masked in the middle.
	keyRun = 8
	// maxFragmentScan bounds the texts searched for pieces of a key
	// (quadratic in the key's length): error bodies are small, answers
	// are searched for the whole key only.
	maxFragmentScan = 64 << 10
	// errorTextLimit is how much of an upstream's error message is shown.
	errorTextLimit = 200
)

// redactAnswer removes every copy of key from an answer relayed as bytes.
// It returns b itself, with no allocation, when the key is not there.
func redactAnswer(b, key []byte) []byte {
	if len(key) < minKeyForAnswers || !bytes.Contains(b, key) {
		return b
	}
	return bytes.ReplaceAll(b, key, redactedBytes)
}

// scrubErrorText makes an upstream's error text fit to show: the key and
// any run of keyRun or more of its characters removed, control characters
// dropped, then cut to limit bytes (0: no cut) on a character boundary.
// cut says s itself is the start of a longer text, so it may end in the
// first characters of a key; those go too.
func scrubErrorText(s, key string, limit int, cut bool) string {
	if len(key) >= minKeyForErrors {
		s = strings.ReplaceAll(s, key, redacted)
		if len(s) <= maxFragmentScan {
			s = redactKeyRuns(s, key)
		}
		if cut {
			s = redactKeyStart(s, key)
		}
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if limit > 0 && len(s) > limit {
		n := limit
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n] + "…"
	}
	return s
}

// redactKeyRuns replaces every run of keyRun or more characters of s that
// also occurs in key.
func redactKeyRuns(s, key string) string {
	if len(key) < keyRun || len(s) < keyRun {
		return s
	}
	var b strings.Builder
	last := 0
	for i := 0; i+keyRun <= len(s); {
		if !strings.Contains(key, s[i:i+keyRun]) {
			i++
			continue
		}
		j := i + keyRun
		for j < len(s) && strings.Contains(key, s[i:j+1]) {
			j++
		}
		b.WriteString(s[last:i])
		b.WriteString(redacted)
		last, i = j, j
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

// redactKeyStart removes the first characters of key (4 or more) where s
// ends with them.
func redactKeyStart(s, key string) string {
	for n := min(len(key)-1, len(s)); n >= minKeyForErrors; n-- {
		if strings.HasSuffix(s, key[:n]) {
			return s[:len(s)-n] + redacted
		}
	}
	return s
}

// hasKeyPiece reports whether a header value an upstream sent carries its
// key, or a piece of it: any of the key's aligned blocks of keyRun
// characters, so any run of 2×keyRun-1 of them. It is on the path of every
// answer, so it does a few substring searches rather than redactKeyRuns's
// full scan.
func hasKeyPiece(v, key string) bool {
	if len(key) < minKeyForErrors || len(v) < minKeyForErrors {
		return false
	}
	if strings.Contains(v, key) {
		return true
	}
	for i := 0; i+keyRun <= len(key); i += keyRun {
		if strings.Contains(v, key[i:i+keyRun]) {
			return true
		}
	}
	return false
}

// upstreamFault is a failure to talk to an upstream, in words a client and
// /health may show. Go's own text of it names addresses and ports of the
// gateway's network and the calls that failed; it stays in cause, for the
// log and for errors.Is.
type upstreamFault struct {
	msg   string
	cause error
}

func (e *upstreamFault) Error() string { return e.msg }
func (e *upstreamFault) Unwrap() error { return e.cause }

// When a transport failure happened, for describeTransport.
const (
	beforeAnswer     = ""
	midAnswer        = "mid-answer"
	beforeFirstEvent = "before the stream's first event"
)

// describeTransport says in words what a transport error was. when is one
// of beforeAnswer, midAnswer and beforeFirstEvent.
func describeTransport(err error, when string) *upstreamFault {
	var what string
	var dns *net.DNSError
	var ne net.Error
	var certInvalid x509.CertificateInvalidError
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var record tls.RecordHeaderError
	var alert tls.AlertError
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		what = "connection reset by upstream"
	case errors.Is(err, syscall.ECONNREFUSED):
		what = "connection refused by upstream"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.EPIPE):
		what = "upstream closed the connection"
		if when == beforeAnswer {
			when = "before answering"
		}
	case errors.As(err, &dns):
		what = "upstream host name could not be resolved"
	case errors.As(err, &certInvalid), errors.As(err, &unknownAuthority), errors.As(err, &hostname),
		errors.As(err, &record), errors.As(err, &alert):
		what = "TLS with upstream failed"
	case errors.As(err, &ne) && ne.Timeout():
		what = "connection to upstream timed out"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		what = "upstream unreachable"
	case strings.Contains(err.Error(), "malformed HTTP"):
		what = "upstream sent a malformed HTTP answer"
	default:
		what = "connection to upstream failed"
	}
	if when != "" {
		what += " " + when
	}
	return &upstreamFault{msg: what, cause: err}
}
