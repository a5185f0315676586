package upstreamsim

import (
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
)

const chatBody = `{"model":"m","messages":[{"role":"user","content":"hello"}]}`

func TestFailureFault(t *testing.T) {
	tests := []struct {
		name           string
		cfg            Config
		path, body     string
		wantStatuses   []int
		wantType       string
		wantCode       string
		wantRetryAfter string
		wantRetryMs    string
	}{
		{
			name: "default status", cfg: Config{FailureRate: 1},
			path: "/v1/chat/completions", body: chatBody,
			wantStatuses: []int{503}, wantType: "server_error",
		},
		{
			name: "429 with retry-after", cfg: Config{FailureRate: 1, FailureStatuses: []int{429}, RetryAfter: 1500 * time.Millisecond},
			path: "/v1/chat/completions", body: chatBody,
			wantStatuses: []int{429}, wantType: "requests", wantCode: "rate_limit_exceeded",
			wantRetryAfter: "2", wantRetryMs: "1500",
		},
		{
			name: "429 without retry-after", cfg: Config{FailureRate: 1, FailureStatuses: []int{429}},
			path: "/v1/chat/completions", body: chatBody,
			wantStatuses: []int{429}, wantType: "requests", wantCode: "rate_limit_exceeded",
		},
		{
			name: "retry-after only on 429", cfg: Config{FailureRate: 1, FailureStatuses: []int{500}, RetryAfter: time.Second},
			path: "/v1/chat/completions", body: chatBody,
			wantStatuses: []int{500}, wantType: "server_error",
		},
		{
			name: "several statuses", cfg: Config{FailureRate: 1, FailureStatuses: []int{500, 502}},
			path: "/v1/chat/completions", body: chatBody,
			wantStatuses: []int{500, 502}, wantType: "server_error",
		},
		{
			name: "streams fail before the stream", cfg: Config{FailureRate: 1},
			path: "/v1/chat/completions", body: `{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}`,
			wantStatuses: []int{503}, wantType: "server_error",
		},
		{
			name: "embeddings", cfg: Config{FailureRate: 1, FailureStatuses: []int{502}},
			path: "/v1/embeddings", body: `{"model":"e","input":"x"}`,
			wantStatuses: []int{502}, wantType: "server_error",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim, ts := startSim(t, tc.cfg)
			const n = 20
			seen := map[int]bool{}
			for range n {
				resp, body := post(t, ts, http.MethodPost, tc.path, "", tc.body)
				if !slices.Contains(tc.wantStatuses, resp.StatusCode) {
					t.Fatalf("status %d, want one of %v: %s", resp.StatusCode, tc.wantStatuses, body)
				}
				seen[resp.StatusCode] = true
				typ, code := decodeError(t, body)
				if typ != tc.wantType || code != tc.wantCode {
					t.Errorf("error type/code = %q/%q, want %q/%q", typ, code, tc.wantType, tc.wantCode)
				}
				if got := resp.Header.Get("Retry-After"); got != tc.wantRetryAfter {
					t.Errorf("Retry-After = %q, want %q", got, tc.wantRetryAfter)
				}
				if got := resp.Header.Get("Retry-After-Ms"); got != tc.wantRetryMs {
					t.Errorf("Retry-After-Ms = %q, want %q", got, tc.wantRetryMs)
				}
			}
			// With a fixed seed the draws are fixed, and 20 of them cover
			// two statuses: this checks the status is drawn, not fixed.
			if len(seen) != len(tc.wantStatuses) {
				t.Errorf("statuses seen %v, want all of %v", seen, tc.wantStatuses)
			}
			if got := sim.Stats().Faults[FaultFailure]; got != n {
				t.Errorf("failures counted = %d, want %d", got, n)
			}
		})
	}
}

// TestFailureSeenByClient checks that the OpenAI client reads an injected
// failure as an API error with the status, as it would from a provider.
func TestFailureSeenByClient(t *testing.T) {
	_, ts := startSim(t, Config{FailureRate: 1, FailureStatuses: []int{429}})
	_, err := newClient(ts, "k").CreateChatCompletion(testContext(t), chatRequestFor("m", "hi"))
	var apiErr *openai.APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("err = %v (%T), want *openai.APIError", err, err)
	}
	if apiErr.HTTPStatusCode != http.StatusTooManyRequests || apiErr.Code != "rate_limit_exceeded" {
		t.Errorf("status/code = %d/%v", apiErr.HTTPStatusCode, apiErr.Code)
	}
}

func TestResetFault(t *testing.T) {
	tests := []struct {
		name, path, body string
	}{
		{"chat", "/v1/chat/completions", chatBody},
		{"stream", "/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}`},
		{"embeddings", "/v1/embeddings", `{"model":"e","input":["a","b"]}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim, ts := startSim(t, Config{ResetRate: 1, FailureRate: 1})
			req, err := http.NewRequestWithContext(testContext(t), http.MethodPost, ts.URL+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := ts.Client().Do(req)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				t.Fatalf("got a response (%d %s), want the connection reset", resp.StatusCode, body)
			}
			st := waitForStats(t, sim, "the reset request to end", func(s Stats) bool { return s.InFlight == 0 })
			// Reset wins over failure when both are drawn.
			if st.Faults[FaultReset] != 1 || st.Faults[FaultFailure] != 0 {
				t.Errorf("faults = %v, want one reset", st.Faults)
			}
		})
	}
}

func TestHangFault(t *testing.T) {
	sim, ts := startSim(t, Config{HangRate: 1, FailureRate: 1})
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := newClient(ts, "k").CreateChatCompletion(ctx, chatRequestFor("m", "hi"))
		done <- err
	}()
	waitForStats(t, sim, "the hang to start", func(s Stats) bool { return s.Faults[FaultHang] == 1 })
	select {
	case err := <-done:
		t.Fatalf("request returned during a hang: %v", err)
	default:
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	st := waitForStats(t, sim, "the hang to end", func(s Stats) bool { return s.InFlight == 0 })
	if st.Cancelled != 1 || st.Faults[FaultFailure] != 0 {
		t.Errorf("stats = %+v, want one cancelled and no failure", st)
	}
}

func TestCutFault(t *testing.T) {
	// CompletionTokens 4: role, 4 content, finish (and usage) events.
	tests := []struct {
		name         string
		cutAfter     int
		includeUsage bool
		wantEvents   int
	}{
		{name: "after headers", cutAfter: 0, wantEvents: 0},
		{name: "after role chunk", cutAfter: 1, wantEvents: 1},
		{name: "mid content", cutAfter: 3, wantEvents: 3},
		{name: "beyond the end, before DONE", cutAfter: 100, wantEvents: 6},
		{name: "beyond the end with usage", cutAfter: 100, includeUsage: true, wantEvents: 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim, ts := startSim(t, Config{CutRate: 1, CutAfterChunks: tc.cutAfter, CompletionTokens: 4})
			req := chatRequestFor("m", "hi")
			req.Stream = true
			if tc.includeUsage {
				req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
			}
			stream, err := newClient(ts, "k").CreateChatCompletionStream(testContext(t), req)
			if err != nil {
				t.Fatalf("CreateChatCompletionStream: %v", err)
			}
			defer stream.Close()
			events := 0
			for {
				_, err = stream.Recv()
				if err != nil {
					break
				}
				events++
			}
			if errors.Is(err, io.EOF) {
				t.Fatal("stream ended cleanly ([DONE]); want it cut")
			}
			if events != tc.wantEvents {
				t.Errorf("events before the cut = %d, want %d", events, tc.wantEvents)
			}
			st := waitForStats(t, sim, "the cut stream to end", func(s Stats) bool { return s.InFlight == 0 })
			if st.Faults[FaultCut] != 1 || st.StreamsStarted != 1 || st.StreamsCompleted != 0 {
				t.Errorf("stats = %+v, want one cut, started, not completed", st)
			}
		})
	}

	t.Run("not for non-streamed answers", func(t *testing.T) {
		sim, ts := startSim(t, Config{CutRate: 1})
		requestOK(t, ts, http.MethodPost, "/v1/chat/completions", chatBody)
		if got := sim.Stats().Faults[FaultCut]; got != 0 {
			t.Errorf("cuts = %d, want 0", got)
		}
	})
}

// TestZeroRatesNeverFault sets every fault's other knobs but leaves the rates
// at zero: nothing may be injected.
func TestZeroRatesNeverFault(t *testing.T) {
	sim, ts := startSim(t, Config{
		FailureStatuses: []int{500, 429}, RetryAfter: time.Second, CutAfterChunks: 1, CompletionTokens: 2,
	})
	stream := `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	for i := range 60 {
		body := chatBody
		if i%2 == 1 {
			body = stream
		}
		resp, data := post(t, ts, http.MethodPost, "/v1/chat/completions", "", body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, data)
		}
	}
	st := sim.Stats()
	for kind, n := range st.Faults {
		if n != 0 {
			t.Errorf("fault %s injected %d times at rate 0", kind, n)
		}
	}
	if st.StreamsCompleted != 30 {
		t.Errorf("streams completed = %d, want 30", st.StreamsCompleted)
	}
}

// TestPartialRate checks that a rate between 0 and 1 injects some faults and
// not others. The seed fixes the draws, so the bounds are deterministic, and
// they are wide enough to hold for any reasonable generator.
func TestPartialRate(t *testing.T) {
	for _, seed := range []int64{0, 1, 42} {
		t.Run("seed "+strconv.FormatInt(seed, 10), func(t *testing.T) {
			sim, ts := startSim(t, Config{Seed: seed, FailureRate: 0.5})
			const n = 200
			failed := 0
			for range n {
				resp, _ := post(t, ts, http.MethodPost, "/v1/chat/completions", "", chatBody)
				if resp.StatusCode != http.StatusOK {
					failed++
				}
			}
			if failed < n/4 || failed > 3*n/4 {
				t.Errorf("%d of %d failed at rate 0.5", failed, n)
			}
			if got := sim.Stats().Faults[FaultFailure]; got != uint64(failed) {
				t.Errorf("failures counted = %d, seen %d", got, failed)
			}
		})
	}
}

// TestCancelled checks that a client going away is noticed and counted
// wherever the server is waiting.
func TestCancelled(t *testing.T) {
	forever := time.Duration(math.MaxInt64)
	tests := []struct {
		name string
		cfg  Config
		// chunks the client reads before it goes away; -1 for a
		// non-streamed request
		chunks int
	}{
		{name: "during latency", cfg: Config{Latency: forever}, chunks: -1},
		{name: "during jitter", cfg: Config{Jitter: forever}, chunks: -1},
		{name: "during latency plus jitter past the largest duration", cfg: Config{Latency: forever, Jitter: forever}, chunks: -1},
		{name: "mid-stream", cfg: Config{ChunkDelay: forever}, chunks: 1},
		// No delay: the server is busy writing an endless answer when the
		// client leaves, and must notice from the connection.
		{name: "mid-stream, writing flat out", cfg: Config{CompletionTokens: math.MaxInt32}, chunks: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim, ts := startSim(t, tc.cfg)
			client := newClient(ts, "k")
			ctx, cancel := context.WithCancel(testContext(t))
			defer cancel()
			read := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				req := chatRequestFor("m", "hi")
				if tc.chunks < 0 {
					close(read)
					_, err := client.CreateChatCompletion(ctx, req)
					done <- err
					return
				}
				req.Stream = true
				stream, err := client.CreateChatCompletionStream(ctx, req)
				if err != nil {
					close(read)
					done <- err
					return
				}
				defer stream.Close()
				for range tc.chunks {
					if _, err := stream.Recv(); err != nil {
						close(read)
						done <- err
						return
					}
				}
				close(read)
				for {
					if _, err := stream.Recv(); err != nil {
						done <- err
						return
					}
				}
			}()
			<-read
			waitForStats(t, sim, "the request to be in flight", func(s Stats) bool { return s.InFlight == 1 })
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("client err = %v, want context.Canceled", err)
			}
			st := waitForStats(t, sim, "the cancellation to be counted", func(s Stats) bool {
				return s.Cancelled == 1 && s.InFlight == 0
			})
			if st.StreamsCompleted != 0 {
				t.Errorf("stats = %+v, want no completed stream", st)
			}
		})
	}
}

func TestSetConfigFlipsBehaviour(t *testing.T) {
	sim, ts := startSim(t, Config{FailureRate: 1})
	steps := []struct {
		cfg  Config
		want int
	}{
		{Config{FailureRate: 1}, http.StatusServiceUnavailable},
		{Config{}, http.StatusOK},
		{Config{FailureRate: 1, FailureStatuses: []int{429}}, http.StatusTooManyRequests},
		{Config{Models: []string{"other"}}, http.StatusNotFound},
	}
	for i, step := range steps {
		sim.SetConfig(step.cfg)
		resp, body := post(t, ts, http.MethodPost, "/v1/chat/completions", "", chatBody)
		if resp.StatusCode != step.want {
			t.Errorf("step %d: status %d, want %d: %s", i, resp.StatusCode, step.want, body)
		}
	}
}

// TestConcurrentUse drives the server from several clients while the
// configuration changes under them; run with -race it proves the hot path
// and SetConfig share nothing unsafely.
func TestConcurrentUse(t *testing.T) {
	sim, ts := startSim(t, Config{FailureRate: 0.3, CompletionTokens: 4})
	const workers, each = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	ctx := testContext(t)
	for w := range workers {
		wg.Go(func() {
			client := newClient(ts, "k")
			for i := range each {
				req := chatRequestFor("m", "worker "+strconv.Itoa(w))
				req.Stream = i%2 == 0
				if !req.Stream {
					_, err := client.CreateChatCompletion(ctx, req)
					errs <- err
					continue
				}
				stream, err := client.CreateChatCompletionStream(ctx, req)
				if err == nil {
					for err == nil {
						_, err = stream.Recv()
					}
					if errors.Is(err, io.EOF) {
						err = nil
					}
					stream.Close()
				}
				errs <- err
			}
		})
	}
	wg.Go(func() {
		for i := range 50 {
			sim.SetConfig(Config{FailureRate: 0.3, CompletionTokens: 4 + i%3, TokensPerChunk: 1 + i%2})
		}
	})
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		var apiErr *openai.APIError
		switch {
		case err == nil:
		case errors.As(err, &apiErr) && apiErr.HTTPStatusCode == http.StatusServiceUnavailable:
			failed++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	// A client sees [DONE] before the handler that wrote it returns, so the
	// last stream may still be counted in flight for a moment.
	st := waitForStats(t, sim, "every request to end", func(s Stats) bool { return s.InFlight == 0 })
	if st.Requests[EndpointChatCompletions] != workers*each || st.Faults[FaultFailure] != uint64(failed) {
		t.Errorf("stats = %+v, want %d requests, %d failures", st, workers*each, failed)
	}
}
