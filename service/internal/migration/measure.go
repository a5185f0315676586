package migration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	openai "github.com/sashabaranov/go-openai"
)

// outcome is what one request measured.
type outcome struct {
	err      error
	timeout  bool
	reason   string // short, secret-free cause of a failure, for the table
	streamed bool
	latency  time.Duration // to the whole answer
	ttft     time.Duration // streamed: to the first token
	usage    *openai.Usage // nil when the upstream reported none
}

var (
	errNoChoices = errors.New("answer has no choices")
	errStreamCut = errors.New("stream ended before a finish_reason")
)

// chatRequest is the request for prompt p to model. A prompt's max_tokens
// is sent as written (relays and model servers still read it, and many do
// not know max_completion_tokens), except to the reasoning models that the
// client refuses it for (o1…, gpt-5…): they get it as
// max_completion_tokens, or every request would fail before it is sent and
// look like the upstream's fault.
func chatRequest(model string, p *Prompt) openai.ChatCompletionRequest {
	req := openai.ChatCompletionRequest{Model: model, Messages: p.Messages, MaxCompletionTokens: p.MaxCompletionTokens}
	//lint:ignore SA1019 see above: max_tokens is what most upstreams read
	req.MaxTokens = p.MaxTokens
	if errors.Is(openai.NewReasoningValidator().Validate(req), openai.ErrReasoningModelMaxTokensDeprecated) {
		if req.MaxCompletionTokens == 0 {
			req.MaxCompletionTokens = p.MaxTokens
		}
		//lint:ignore SA1019 cleared, not used
		req.MaxTokens = 0
	}
	return req
}

// send makes one request with the real OpenAI client and times it the way
// a client experiences it: latency to the end of the answer, and for a
// stream, time to the first chunk that carries content.
func (t *target) send(ctx context.Context, p *Prompt, stream bool) outcome {
	rctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	req := chatRequest(t.model, p)
	start := time.Now()
	if !stream {
		resp, err := t.client.CreateChatCompletion(rctx, req)
		o := outcome{latency: time.Since(start)}
		switch {
		case err != nil:
			return o.failed(rctx, t.timeout, err)
		case len(resp.Choices) == 0:
			return o.failed(rctx, t.timeout, errNoChoices)
		}
		o.usage = usageOf(&resp.Usage)
		return o
	}

	req.Stream = true
	req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
	o := outcome{streamed: true}
	s, err := t.client.CreateChatCompletionStream(rctx, req)
	if err != nil {
		o.latency = time.Since(start)
		return o.failed(rctx, t.timeout, err)
	}
	defer s.Close()
	finished := false
	for {
		chunk, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			o.latency = time.Since(start)
			return o.failed(rctx, t.timeout, err)
		}
		for _, c := range chunk.Choices {
			d := c.Delta
			if o.ttft == 0 && (d.Content != "" || d.ReasoningContent != "" || d.Refusal != "" || len(d.ToolCalls) > 0) {
				o.ttft = time.Since(start)
			}
			if c.FinishReason != "" {
				finished = true
			}
		}
		if chunk.Usage != nil {
			o.usage = usageOf(chunk.Usage)
		}
	}
	o.latency = time.Since(start)
	// go-openai ends a stream cut mid-way with io.EOF as well as one that
	// reached [DONE]; only a finish_reason tells a whole answer.
	if !finished {
		return o.failed(rctx, t.timeout, errStreamCut)
	}
	if o.ttft == 0 { // an empty answer: its first token is its end
		o.ttft = o.latency
	}
	return o
}

func usageOf(u *openai.Usage) *openai.Usage {
	if u.PromptTokens+u.CompletionTokens <= 0 {
		return nil
	}
	c := *u
	return &c
}

// failed marks o as failed by err, telling a timeout (the request's own
// deadline, or a network timeout such as the connect timeout) from other
// errors.
func (o outcome) failed(rctx context.Context, limit time.Duration, err error) outcome {
	o.err = err
	var ne net.Error
	if errors.Is(rctx.Err(), context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		o.timeout = true
		o.reason = fmt.Sprintf("timeout (limit %s)", limit)
		return o
	}
	o.reason = failureReason(err)
	return o
}

// failureReason names a failure in a few words for the table. It keeps to
// status codes, error codes and network causes: an upstream's error message
// may quote part of the key it refused, so it is never copied.
func failureReason(err error) string {
	var apiErr *openai.APIError
	if errors.As(err, &apiErr) {
		what := apiErr.Type
		if code, ok := apiErr.Code.(string); ok && code != "" {
			what = code
		}
		if apiErr.HTTPStatusCode == 0 {
			return fmt.Sprintf("error event in stream (%s)", orDash(what))
		}
		if what == "" {
			return fmt.Sprintf("HTTP %d", apiErr.HTTPStatusCode)
		}
		return fmt.Sprintf("HTTP %d %s", apiErr.HTTPStatusCode, what)
	}
	var reqErr *openai.RequestError
	if errors.As(err, &reqErr) && reqErr.HTTPStatusCode != 0 {
		return fmt.Sprintf("HTTP %d", reqErr.HTTPStatusCode)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return "DNS: " + dnsErr.Err
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var certErr *tls.CertificateVerificationError
	var unknownAuthority x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	if errors.As(err, &certErr) || errors.As(err, &unknownAuthority) || errors.As(err, &hostErr) {
		return "TLS certificate not trusted"
	}
	switch {
	case errors.Is(err, errNoChoices), errors.Is(err, errStreamCut):
		return err.Error()
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "connection closed mid-answer"
	}
	return truncate(err.Error(), 80)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}
