// Command democlient is the client half of `make demo`: a short session
// against a running gateway with unmodified clients (go-openai for Chat
// Completions, the official Anthropic and OpenAI SDKs for Messages and
// Responses), printing
// what it did and what the gateway reported, the way a team would try
// Relaygate before pointing its services at it.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	openai "github.com/sashabaranov/go-openai"
)

func main() {
	gateway := flag.String("gateway", "http://127.0.0.1:8000", "gateway base URL")
	key := flag.String("key", os.Getenv("GATEWAY_API_KEY"), "client key (default $GATEWAY_API_KEY)")
	model := flag.String("model", "gpt-4.1", "model to ask")
	prom := flag.String("prometheus", "", "Prometheus base URL, to show the gateway's series there")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := session(ctx, *gateway, *key, *model, *prom); err != nil {
		fmt.Fprintln(os.Stderr, "democlient:", err)
		os.Exit(1)
	}
}

func step(title string) { fmt.Printf("\n── %s\n", title) }

func session(ctx context.Context, base, key, model, prom string) error {
	cfg := openai.DefaultConfig(key)
	cfg.BaseURL = strings.TrimRight(base, "/") + "/v1"
	client := openai.NewClientWithConfig(cfg)
	msgs := []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "In one sentence: why put a gateway in front of a model API?"}}

	step("GET /health")
	var h struct {
		Status    string `json:"status"`
		Upstreams []struct {
			Name, State string
			Available   bool
		} `json:"upstreams"`
	}
	if err := getJSON(ctx, base+"/health", &h); err != nil {
		return err
	}
	fmt.Printf("status %s;", h.Status)
	for _, u := range h.Upstreams {
		fmt.Printf(" %s=%s", u.Name, u.State)
	}
	fmt.Println()

	step("chat completion (" + model + ")")
	t0 := time.Now()
	resp, err := client.CreateChatCompletion(ctx, openai.ChatCompletionRequest{Model: model, Messages: msgs, MaxCompletionTokens: 64})
	if err != nil {
		return fmt.Errorf("completion: %w", err)
	}
	fmt.Printf("answer:   %s\n", firstChoice(resp))
	fmt.Printf("upstream: %s   latency: %s   tokens: %d prompt + %d completion   %s\n",
		resp.Header().Get("X-Relaygate-Upstream"), time.Since(t0).Round(time.Millisecond),
		resp.Usage.PromptTokens, resp.Usage.CompletionTokens, resp.Header().Get("Server-Timing"))

	step("stream (" + model + "), tokens printed as they arrive")
	t0 = time.Now()
	stream, err := client.CreateChatCompletionStream(ctx, openai.ChatCompletionRequest{Model: model, Messages: msgs, Stream: true,
		StreamOptions: &openai.StreamOptions{IncludeUsage: true}, MaxCompletionTokens: 64})
	if err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	var ttft time.Duration
	chunks := 0
	var usage *openai.Usage
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			stream.Close()
			return fmt.Errorf("stream: %w", err)
		}
		if c.Usage != nil {
			usage = c.Usage
		}
		if len(c.Choices) > 0 && c.Choices[0].Delta.Content != "" {
			if ttft == 0 {
				ttft = time.Since(t0)
			}
			chunks++
			fmt.Print(c.Choices[0].Delta.Content)
		}
	}
	stream.Close()
	fmt.Printf("\nchunks: %d   time to first token: %s   total: %s", chunks, ttft.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	if usage != nil {
		fmt.Printf("   usage: %d+%d tokens", usage.PromptTokens, usage.CompletionTokens)
	}
	fmt.Println()

	step("cache: the same request twice, asking for caching with " + cacheHeader + ": force")
	// go-openai cannot send "temperature": 0 (the field is omitempty), so
	// this client asks for caching with the gateway's header instead.
	forceCfg := cfg
	forceCfg.HTTPClient = &http.Client{Transport: headerTransport{cacheHeader, "force"}}
	cached := openai.NewClientWithConfig(forceCfg)
	for i := 1; i <= 2; i++ {
		t0 = time.Now()
		r, err := cached.CreateChatCompletion(ctx, openai.ChatCompletionRequest{Model: model, Messages: msgs, Temperature: 0, MaxCompletionTokens: 32})
		if err != nil {
			return fmt.Errorf("cached completion: %w", err)
		}
		fmt.Printf("try %d: X-Cache %-6s upstream %-10s %s\n", i, r.Header().Get("X-Cache"), r.Header().Get("X-Relaygate-Upstream"), time.Since(t0).Round(time.Microsecond))
	}

	if err := messagesStep(ctx, base, key, "claude-sonnet-4.5"); err != nil {
		return err
	}
	if err := responsesStep(ctx, base, key, model); err != nil {
		return err
	}

	step("what a client sees when something is wrong")
	_, err = client.CreateChatCompletion(ctx, openai.ChatCompletionRequest{Model: "no-such-model", Messages: msgs})
	fmt.Println("unknown model:", describe(err))
	badCfg := openai.DefaultConfig("sk-wrong")
	badCfg.BaseURL = cfg.BaseURL
	_, err = openai.NewClientWithConfig(badCfg).CreateChatCompletion(ctx, openai.ChatCompletionRequest{Model: model, Messages: msgs})
	fmt.Println("wrong key:    ", describe(err))

	step("GET /metrics (relaygate_ series, excerpt)")
	if err := printMetrics(ctx, base+"/metrics"); err != nil {
		return err
	}
	if prom != "" {
		step("Prometheus has scraped the gateway")
		if err := printPrometheus(ctx, prom); err != nil {
			return err
		}
	}
	return nil
}

const cacheHeader = "X-Relaygate-Cache"

// headerTransport adds one header to every request.
type headerTransport struct{ name, value string }

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(h.name, h.value)
	return http.DefaultTransport.RoundTrip(r)
}

func firstChoice(r openai.ChatCompletionResponse) string {
	if len(r.Choices) == 0 {
		return "(no choices)"
	}
	return r.Choices[0].Message.Content
}

func describe(err error) string {
	var apiErr *openai.APIError
	if errors.As(err, &apiErr) {
		return fmt.Sprintf("HTTP %d %v: %s", apiErr.HTTPStatusCode, apiErr.Code, apiErr.Message)
	}
	return fmt.Sprint(err)
}

func getJSON(ctx context.Context, u string, v any) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func printMetrics(ctx context.Context, u string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		for _, p := range []string{"relaygate_requests_total", "relaygate_tokens_total", "relaygate_cost_usd_total", "relaygate_savings_usd_total", "relaygate_cache_requests_total", "relaygate_upstream_up", "relaygate_gpu_count"} {
			if strings.HasPrefix(l, p) {
				fmt.Println(l)
			}
		}
	}
	return sc.Err()
}

func printPrometheus(ctx context.Context, base string) error {
	q := url.Values{"query": {`sum by (model, code) (relaygate_requests_total)`}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var r struct {
			Data struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
					Value  []any             `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := getJSON(ctx, strings.TrimRight(base, "/")+"/api/v1/query?"+q.Encode(), &r); err != nil {
			return fmt.Errorf("prometheus: %w", err)
		}
		if len(r.Data.Result) > 0 {
			for _, s := range r.Data.Result {
				fmt.Printf("relaygate_requests_total{model=%q,code=%q} = %v\n", s.Metric["model"], s.Metric["code"], s.Value[1])
			}
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("prometheus has no relaygate_requests_total after 30s: is the gateway in its targets?")
		}
		time.Sleep(time.Second)
	}
}
