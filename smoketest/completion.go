package smoketest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	openai "github.com/sashabaranov/go-openai"
)

// maxTokens keeps every answer the smoke test asks for short: it proves the
// path, not the model, and costs next to nothing on a paid upstream.
const maxTokens = 16

func (r *runner) prompt(what string) []openai.ChatCompletionMessage {
	return []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser,
		Content: "Relaygate smoke test (" + what + "). Reply with one short sentence."}}
}

func (r *runner) checkCompletion(ctx context.Context, s *Step) {
	t0 := time.Now()
	resp, err := r.openai.CreateChatCompletion(ctx, openai.ChatCompletionRequest{
		Model: r.model, Messages: r.prompt("completion"), MaxCompletionTokens: maxTokens,
	})
	if err != nil {
		s.fail(r.openaiError(ctx, "the completion", err))
		return
	}
	r.okRequests++
	r.ledgerProbe = &ledgerProbe{requestID: resp.Header().Get("X-Request-Id"), model: r.model,
		upstream: resp.Header().Get("X-Relaygate-Upstream"), promptTokens: resp.Usage.PromptTokens, complTok: resp.Usage.CompletionTokens}
	if len(resp.Choices) == 0 {
		s.fail("the answer has no choices", "the upstream answered in an unexpected shape; check the model's route in the stack config")
		return
	}
	c := resp.Choices[0]
	if strings.TrimSpace(c.Message.Content) == "" && c.FinishReason == "" {
		s.fail("the answer is empty and has no finish_reason", "the upstream answered in an unexpected shape; check the model's route in the stack config")
		return
	}
	s.passf("%s answered via %s in %s, %d+%d tokens: %q", r.model, orNone(resp.Header().Get("X-Relaygate-Upstream")),
		formatMS(ms(time.Since(t0))), resp.Usage.PromptTokens, resp.Usage.CompletionTokens, clip(c.Message.Content, 60))
}

func (r *runner) checkStream(ctx context.Context, s *Step) {
	t0 := time.Now()
	stream, err := r.openai.CreateChatCompletionStream(ctx, openai.ChatCompletionRequest{
		Model: r.model, Messages: r.prompt("stream"), MaxCompletionTokens: maxTokens, Stream: true,
		StreamOptions: &openai.StreamOptions{IncludeUsage: true},
	})
	if err != nil {
		s.fail(r.openaiError(ctx, "the stream", err))
		return
	}
	defer stream.Close()
	var text strings.Builder
	var ttft time.Duration
	chunks, finish := 0, ""
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.fail(r.openaiError(ctx, fmt.Sprintf("the stream (after %d chunks)", chunks), err))
			return
		}
		for _, c := range chunk.Choices {
			if c.Delta.Content != "" {
				if ttft == 0 {
					ttft = time.Since(t0)
				}
				text.WriteString(c.Delta.Content)
				chunks++
			}
			if c.FinishReason != "" {
				finish = string(c.FinishReason)
			}
		}
	}
	r.okRequests++
	r.okStreams++
	r.streamSeen = true
	if chunks == 0 || finish == "" {
		s.fail(fmt.Sprintf("the stream ended after %d content chunk(s) without a finish_reason", chunks),
			"the stream was cut short: a proxy or load balancer in front of the gateway may buffer or time out Server-Sent Events "+
				"(raise its idle timeout), or the upstream broke the stream; the gateway's log has the request")
		return
	}
	s.passf("%d chunks, first after %s, done in %s (finish_reason %s): %q", chunks, formatMS(ms(ttft)),
		formatMS(ms(time.Since(t0))), finish, clip(text.String(), 60))
}

// checkCache sends the same temperature-0 request until it comes back as a
// cache hit. go-openai leaves "temperature": 0 out of the JSON it sends
// (omitempty), so this one is written by hand.
func (r *runner) checkCache(ctx context.Context, s *Step) {
	body, _ := json.Marshal(map[string]any{
		"model":                 r.model,
		"messages":              []map[string]string{{"role": "user", "content": "Relaygate smoke test cache probe " + r.runID + ". Reply with OK."}},
		"temperature":           0,
		"max_completion_tokens": maxTokens,
	})
	// The gateway stores an answer after sending it, so the very next
	// request can overtake the write; a few tries, spaced out, tell a
	// slow store from a cache that does not work.
	const attempts = 5
	var seen []string
	for i := range attempts {
		if i > 0 {
			select {
			case <-ctx.Done():
				s.fail(r.reachError(ctx, "the gateway", ctx.Err()))
				return
			case <-time.After(time.Duration(i) * 100 * time.Millisecond):
			}
		}
		code, header, respBody, err := r.post(ctx, "/v1/chat/completions", body, nil)
		if err != nil {
			s.fail(r.reachError(ctx, "the gateway", err))
			return
		}
		if code != http.StatusOK {
			s.fail(fmt.Sprintf("the cache probe answered HTTP %d: %s", code, errorMessage(respBody)), completionHint(code))
			return
		}
		r.okRequests++
		x := header.Get("X-Cache")
		seen = append(seen, orNone(x))
		if x == "HIT" {
			r.cacheHitSeen = true
			s.passf("X-Cache %s: answered from the cache (upstream %q)", strings.Join(seen, " → "), header.Get("X-Relaygate-Upstream"))
			return
		}
		if x == "BYPASS" || x == "" {
			break
		}
	}
	detail := fmt.Sprintf("%d identical temperature-0 requests, X-Cache %s: never a HIT", len(seen), strings.Join(seen, " → "))
	h, err := r.fetchHealth(ctx)
	switch {
	case err != nil:
		s.fail(detail, "the cache did not answer; /health could not be read to say why: "+err.Error())
	case h.Cache == nil || !h.Cache.Enabled:
		s.fail(detail+"; /health: cache off", "the gateway runs without a cache: its config has no cache.redis_url (the stack wires it to Redis; check the rendered config on the host)")
	case h.Cache.Up != nil && !*h.Cache.Up:
		s.fail(detail+"; /health: cache down: "+h.Cache.LastError,
			"Redis is unreachable from the gateway: check that the Redis container (or the managed Redis) runs, that cache.redis_url points at it, "+
				"and that its security group admits the GPU hosts; the gateway keeps serving without the cache meanwhile, at full upstream cost")
	default:
		s.fail(detail+"; /health: cache up",
			"Redis answers but nothing is stored: check Redis's maxmemory and eviction policy (a full noeviction Redis refuses writes), "+
				"that cacheTtl is not zero, and the gateway's log for cache errors")
	}
}

// post sends a JSON body with the key and returns status, headers and up
// to 1 MiB of body.
func (r *runner) post(ctx context.Context, path string, body []byte, header http.Header) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.opts.Outputs.GatewayURL+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("POST %s: %w", path, err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+r.opts.Outputs.GatewayAPIKey)
	resp, err := r.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, resp.Header, b, fmt.Errorf("POST %s: reading the answer: %w", path, err)
	}
	return resp.StatusCode, resp.Header, b, nil
}

// openaiError explains a go-openai failure.
func (r *runner) openaiError(ctx context.Context, what string, err error) (detail, hint string) {
	var apiErr *openai.APIError
	var reqErr *openai.RequestError
	switch {
	case errors.As(err, &apiErr):
		return fmt.Sprintf("%s failed: HTTP %d: %s", what, apiErr.HTTPStatusCode, apiErr.Message), completionHint(apiErr.HTTPStatusCode)
	case errors.As(err, &reqErr) && reqErr.HTTPStatusCode != 0:
		return fmt.Sprintf("%s failed: HTTP %d: %v", what, reqErr.HTTPStatusCode, reqErr.Err), completionHint(reqErr.HTTPStatusCode)
	default:
		return r.reachError(ctx, "the gateway", err)
	}
}

// completionHint says what a gateway status on a model request means.
func completionHint(code int) string {
	switch {
	case code == http.StatusUnauthorized:
		return "the gateway refused the stack's gatewayApiKey; see the auth check"
	case code == http.StatusNotFound:
		return "the model is not in the gateway's config: pass -model with one it lists, or add it to the stack's `models`"
	case code == http.StatusTooManyRequests:
		return "the per-key rate limit (rateLimit rpm/tpm) is too low for the smoke test's requests; raise it or lower -requests"
	case code == http.StatusBadGateway || code == http.StatusGatewayTimeout:
		return "the gateway reached no upstream for the model: the health check's upstreams show which failed and why " +
			"(a rejected upstream key, no egress from the host, an upstream outage)"
	case code >= 500:
		return "the gateway failed; its log on the host has the request (look up the X-Request-Id)"
	default:
		return "the gateway refused the request; its message says why"
	}
}

func clip(s string, n int) string {
	s = oneLine(s)
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
