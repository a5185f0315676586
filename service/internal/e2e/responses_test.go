package e2e

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/app"
	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// TestResponseIDsSharedThroughRedis: two gateway replicas share one real
// Redis. A response created through the first (on upstream a) is followed
// up, retrieved and streamed from through the second, whose route puts b
// first: the id map in Redis sends them all to a. Without the shared map
// the second replica would not know the id (404), and b, which never saw
// the response, would answer 404 as well.
func TestResponseIDsSharedThroughRedis(t *testing.T) {
	redis := testenv.StartRedis(t)
	simA, simB := upstreamsim.New(upstreamsim.Config{CompletionTokens: 5}), upstreamsim.New(upstreamsim.Config{CompletionTokens: 5})
	upA, upB := httptest.NewServer(simA), httptest.NewServer(simB)
	t.Cleanup(upA.Close)
	t.Cleanup(upB.Close)
	const key = "sk-e2e-responses-0123456789"

	replica := func(route string) openai.Client {
		doc := `
listen: "127.0.0.1:0"
client_keys: ["` + key + `"]
upstreams:
  - {name: a, base_url: "` + upA.URL + `/v1", timeout: 30s, connect_timeout: 2s, apis: [responses]}
  - {name: b, base_url: "` + upB.URL + `/v1", timeout: 30s, connect_timeout: 2s, response_retention: 1h, apis: [responses]}
models:
  - {name: gpt-4.1, route: [` + route + `], price: {input_per_mtok: 2, output_per_mtok: 8, cache_read_per_mtok: 0.5}}
retry: {attempts: 2, backoff_min: 10ms, backoff_max: 100ms}
cache: {redis_url: "` + redis.URL + `", ttl: 10m, timeout: 500ms}
gpu: {expected_count: 0, interval: 1h}
log: {level: warn, requests: false}
`
		cfg, err := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
		if err != nil {
			t.Fatal(err)
		}
		logs := &testenv.SyncBuffer{}
		a, err := app.New(t.Context(), cfg, slog.New(slog.NewTextHandler(logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(a.Handler())
		t.Cleanup(func() {
			srv.Close()
			if err := a.Close(); err != nil {
				t.Errorf("app.Close: %v", err)
			}
			if t.Failed() {
				t.Logf("gateway log:\n%s", logs.String())
			}
		})
		return openai.NewClient(option.WithBaseURL(srv.URL+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0))
	}
	first, second := replica("a, b"), replica("b, a")
	ctx := context.Background()
	input := func(s string) responses.ResponseNewParamsInputUnion {
		return responses.ResponseNewParamsInputUnion{OfString: openai.String(s)}
	}

	var hr *http.Response
	created, err := first.Responses.New(ctx, responses.ResponseNewParams{Model: "gpt-4.1", Input: input("hello")}, option.WithResponseInto(&hr))
	if err != nil || hr.Header.Get("X-Relaygate-Upstream") != "a" {
		t.Fatalf("create through the first replica: %v (upstream %q)", err, hr.Header.Get("X-Relaygate-Upstream"))
	}
	follow, err := second.Responses.New(ctx, responses.ResponseNewParams{Model: "gpt-4.1", Input: input("again"),
		PreviousResponseID: openai.String(created.ID)}, option.WithResponseInto(&hr))
	if err != nil || hr.Header.Get("X-Relaygate-Upstream") != "a" || follow.PreviousResponseID != created.ID {
		t.Fatalf("follow-up through the second replica: %v (upstream %q)", err, hr.Header.Get("X-Relaygate-Upstream"))
	}
	// A stream through the second replica chains on, and its id (from
	// response.created) is recorded for the first replica to find.
	stream := second.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: "gpt-4.1", Input: input("stream"),
		PreviousResponseID: openai.String(follow.ID)})
	streamedID := ""
	for stream.Next() {
		if ev := stream.Current(); ev.Type == "response.completed" {
			streamedID = ev.Response.ID
		}
	}
	if err := stream.Err(); err != nil || streamedID == "" {
		t.Fatalf("stream: %v, id %q", err, streamedID)
	}
	got, err := first.Responses.Get(ctx, streamedID, responses.ResponseGetParams{}, option.WithResponseInto(&hr))
	if err != nil || got.ID != streamedID || got.PreviousResponseID != follow.ID || hr.Header.Get("X-Relaygate-Upstream") != "a" {
		t.Fatalf("retrieve through the first replica: %v %+v", err, got)
	}
	if n := simB.Stats().Requests[upstreamsim.EndpointResponses]; n != 0 {
		t.Errorf("upstream b got %d Responses requests; every one belonged to a", n)
	}
}
