package gateway

import (
	"context"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// responsesPrice is the model price of the Responses tests, with a cached
// input price so cost shows whether cached tokens were priced apart.
const responsesPrice = "{input_per_mtok: 1, output_per_mtok: 2, cache_read_per_mtok: 0.25}"

// responsesSim serves a simulator over loopback as an upstream named by its
// place in newGateway's list.
func responsesSim(t *testing.T, key string, cfg upstreamsim.Config) (*upstreamsim.Server, *fakeUpstream) {
	t.Helper()
	cfg.APIKey = key
	sim := upstreamsim.New(cfg)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, &fakeUpstream{Server: srv}
}

// sdkClient is the official OpenAI Go SDK, unmodified, pointed at the
// gateway; its own retries are off so that what a test sees is the
// gateway's answer.
func sdkClient(gwURL string) openai.Client {
	return openai.NewClient(option.WithBaseURL(gwURL+"/v1/"), option.WithAPIKey(testClientKey), option.WithMaxRetries(0))
}

// responsesGateway is newGateway with model m priced for caching.
func responsesGateway(t *testing.T, o gwOpts, ups ...*fakeUpstream) (*httptest.Server, *Server, func(route string)) {
	t.Helper()
	o.price = responsesPrice
	srv, gw, _ := newGateway(t, o, ups...)
	reroute := func(route string) {
		o2 := o
		o2.routeA = route
		gw.Reload(gatewayConfig(t, o2, ups...))
	}
	return srv, gw, reroute
}

func apiErrorOf(t *testing.T, err error) *openai.Error {
	t.Helper()
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("want an API error, got %v", err)
	}
	return apiErr
}

func TestResponsesSDK(t *testing.T) {
	simA, upA := responsesSim(t, "upstream-key-a", upstreamsim.Config{CompletionTokens: 6, ReasoningTokens: 3})
	simB, upB := responsesSim(t, "upstream-key-b", upstreamsim.Config{CompletionTokens: 6})
	gwSrv, gw, reroute := responsesGateway(t, gwOpts{}, upA, upB)
	_ = gw
	client := sdkClient(gwSrv.URL)
	ctx := context.Background()
	m := gw.metrics

	// Whole: the first upstream of the route answers and the id is mapped.
	var hr *http.Response
	first, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: "m",
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Say hello")}}, option.WithResponseInto(&hr))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if first.Status != "completed" || first.OutputText() == "" || first.Usage.OutputTokensDetails.ReasoningTokens != 3 ||
		hr.Header.Get("X-Relaygate-Upstream") != "a" || hr.Header.Get("X-Cache") != "BYPASS" {
		t.Fatalf("create = %s %q usage %+v upstream %q cache %q", first.Status, first.OutputText(), first.Usage,
			hr.Header.Get("X-Relaygate-Upstream"), hr.Header.Get("X-Cache"))
	}
	waitMetric(t, m, "relaygate_tokens_total", map[string]string{"model": "m", "api": "responses", "kind": "completion"}, float64(first.Usage.OutputTokens))

	// Streamed through the SDK's reader: deltas add up to the final text,
	// and the usage of response.completed is what the gateway counts.
	stream := client.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: "m",
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Stream hello")}})
	var deltas strings.Builder
	var done responses.Response
	var types []string
	for stream.Next() {
		ev := stream.Current()
		types = append(types, ev.Type)
		switch ev.Type {
		case "response.output_text.delta":
			deltas.WriteString(ev.Delta)
		case "response.completed":
			done = ev.Response
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("stream: %v (events %v)", err, types)
	}
	_ = stream.Close()
	if types[0] != "response.created" || types[1] != "response.in_progress" || done.ID == "" ||
		deltas.String() != done.OutputText() || done.Usage.OutputTokens == 0 {
		t.Fatalf("stream events %v, deltas %q, completed %q usage %+v", types, deltas.String(), done.OutputText(), done.Usage)
	}
	waitMetric(t, m, "relaygate_tokens_total", map[string]string{"model": "m", "api": "responses", "kind": "completion"},
		float64(first.Usage.OutputTokens+done.Usage.OutputTokens))

	// Retrieve and input items go to the creator.
	got, err := client.Responses.Get(ctx, done.ID, responses.ResponseGetParams{})
	if err != nil || got.ID != done.ID || got.OutputText() != done.OutputText() {
		t.Fatalf("retrieve: %v %+v", err, got)
	}
	items, err := client.Responses.InputItems.List(ctx, first.ID, responses.InputItemListParams{})
	if err != nil || len(items.Data) != 1 {
		t.Fatalf("input items: %v %+v", err, items)
	}

	// The route changes: b comes first, and b fails every new request. A
	// follow-up still reaches a, the creator (b, a simulator that never
	// saw the response, would answer 404), with its context cached.
	reroute("b, a")
	simB.SetConfig(upstreamsim.Config{APIKey: "upstream-key-b", FailureRate: 1})
	costBefore := metricValue(t, m, "relaygate_cost_usd_total", map[string]string{"model": "m", "api": "responses", "upstream": "a"})
	bBefore := simB.Stats().Requests[upstreamsim.EndpointResponses]
	follow, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: "m", PreviousResponseID: openai.String(first.ID),
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("And again")}}, option.WithResponseInto(&hr))
	if err != nil {
		t.Fatalf("follow-up: %v", err)
	}
	if hr.Header.Get("X-Relaygate-Upstream") != "a" || follow.PreviousResponseID != first.ID ||
		follow.Usage.InputTokensDetails.CachedTokens == 0 {
		t.Fatalf("follow-up went to %q, previous %q, usage %+v", hr.Header.Get("X-Relaygate-Upstream"), follow.PreviousResponseID, follow.Usage)
	}
	if n := simB.Stats().Requests[upstreamsim.EndpointResponses]; n != bBefore {
		t.Errorf("upstream b got %d Responses requests for a follow-up pinned to a", n-bBefore)
	}
	u := follow.Usage
	want := (float64(u.InputTokens-u.InputTokensDetails.CachedTokens)*1 + float64(u.InputTokensDetails.CachedTokens)*0.25 + float64(u.OutputTokens)*2) / 1e6
	waitFor(t, func() bool {
		got := metricValue(t, m, "relaygate_cost_usd_total", map[string]string{"model": "m", "api": "responses", "upstream": "a"}) - costBefore
		return math.Abs(got-want) < 1e-12
	})
	// A new request falls back from the failing b to a.
	if _, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: "m",
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("new")}}, option.WithResponseInto(&hr)); err != nil ||
		hr.Header.Get("X-Relaygate-Upstream") != "a" {
		t.Fatalf("new request with b failing: %v, upstream %q", err, hr.Header.Get("X-Relaygate-Upstream"))
	}

	// The creator is down: a clear error naming it, and b is not asked.
	simA.SetConfig(upstreamsim.Config{APIKey: "upstream-key-a", FailureRate: 1})
	bBefore = simB.Stats().Requests[upstreamsim.EndpointResponses]
	_, err = client.Responses.New(ctx, responses.ResponseNewParams{Model: "m", PreviousResponseID: openai.String(follow.ID),
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("once more")}})
	apiErr := apiErrorOf(t, err)
	if apiErr.StatusCode != http.StatusBadGateway || apiErr.Code != "response_upstream_failed" ||
		!strings.Contains(apiErr.Message, "upstream a") || !strings.Contains(apiErr.Message, "HTTP 503") {
		t.Errorf("creator down: %d %s %q", apiErr.StatusCode, apiErr.Code, apiErr.Message)
	}
	if _, err := client.Responses.Get(ctx, follow.ID, responses.ResponseGetParams{}); err == nil {
		t.Error("retrieve with the creator down succeeded")
	}
	if n := simB.Stats().Requests[upstreamsim.EndpointResponses]; n != bBefore {
		t.Errorf("upstream b got %d requests while the creator was down", n-bBefore)
	}
	// The creator is rate limited: 429 with its Retry-After, as an
	// unpinned request would get, so the SDK's retry waits it out.
	simA.SetConfig(upstreamsim.Config{APIKey: "upstream-key-a", FailureRate: 1, FailureStatuses: []int{http.StatusTooManyRequests}, RetryAfter: 7 * time.Second})
	_, err = client.Responses.New(ctx, responses.ResponseNewParams{Model: "m", PreviousResponseID: openai.String(follow.ID),
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("once more")}}, option.WithMaxRetries(0))
	apiErr = apiErrorOf(t, err)
	if apiErr.StatusCode != http.StatusTooManyRequests || apiErr.Code != "rate_limit_exceeded" || apiErr.Response.Header.Get("Retry-After") != "7" ||
		!strings.Contains(apiErr.Message, "upstream a") {
		t.Errorf("creator rate limited: %d %s Retry-After %q %q", apiErr.StatusCode, apiErr.Code, apiErr.Response.Header.Get("Retry-After"), apiErr.Message)
	}
	simA.SetConfig(upstreamsim.Config{APIKey: "upstream-key-a", CompletionTokens: 6})

	// Cancel a background response; delete one, after which it is unknown.
	bg, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: "m", Background: openai.Bool(true),
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("slow job")}})
	if err != nil || bg.Status != "queued" {
		t.Fatalf("background: %v %+v", err, bg)
	}
	cancelled, err := client.Responses.Cancel(ctx, bg.ID)
	if err != nil || cancelled.Status != "cancelled" {
		t.Fatalf("cancel: %v %+v", err, cancelled)
	}
	if err := client.Responses.Delete(ctx, first.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	_, err = client.Responses.Get(ctx, first.ID, responses.ResponseGetParams{})
	if e := apiErrorOf(t, err); e.StatusCode != http.StatusNotFound || e.Code != "response_not_found" {
		t.Errorf("retrieve after delete: %d %s", e.StatusCode, e.Code)
	}

	// Unknown ids, and store: false, which leaves nothing to follow up.
	_, err = client.Responses.New(ctx, responses.ResponseNewParams{Model: "m", PreviousResponseID: openai.String("resp_unknown"),
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("x")}})
	if e := apiErrorOf(t, err); e.StatusCode != http.StatusNotFound || e.Code != "previous_response_not_found" || e.Param != "previous_response_id" {
		t.Errorf("unknown previous id: %d %s %s", e.StatusCode, e.Code, e.Param)
	}
	eph, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: "m", Store: openai.Bool(false),
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("x")}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.Responses.Get(ctx, eph.ID, responses.ResponseGetParams{})
	if e := apiErrorOf(t, err); e.StatusCode != http.StatusNotFound {
		t.Errorf("retrieve of a store:false response: %d", e.StatusCode)
	}
}

// TestResponsesStreamFallbackAfterCreated: the first upstream sends
// response.created, then response.failed. Those events were held, so the
// stream falls back and the client sees one clean stream, the second
// upstream's, whose id is the one mapped.
func TestResponsesStreamFallbackAfterCreated(t *testing.T) {
	simA, upA := responsesSim(t, "upstream-key-a", upstreamsim.Config{FailAfterCreatedRate: 1})
	_, upB := responsesSim(t, "upstream-key-b", upstreamsim.Config{CompletionTokens: 5})
	gwSrv, gw, _ := responsesGateway(t, gwOpts{attempts: 1}, upA, upB)
	client := sdkClient(gwSrv.URL)
	ctx := context.Background()

	stream := client.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: "m",
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hello")}})
	created, ids := 0, map[string]bool{}
	var last string
	for stream.Next() {
		ev := stream.Current()
		if ev.Type == "response.created" {
			created++
			ids[ev.Response.ID] = true
		}
		if ev.Type == "response.failed" || ev.Type == "error" {
			t.Errorf("client saw %s", ev.Type)
		}
		last = ev.Type
	}
	if err := stream.Err(); err != nil || created != 1 || last != "response.completed" {
		t.Fatalf("stream: err %v, %d response.created, last %s", err, created, last)
	}
	if simA.Stats().Faults[upstreamsim.FaultFailedAfterCreated] != 1 {
		t.Fatalf("the fault did not fire: %v", simA.Stats().Faults)
	}
	waitMetric(t, gw.metrics, "relaygate_fallbacks_total", map[string]string{"from": "a", "to": "b"}, 1)
	for id := range ids {
		var hr *http.Response
		if _, err := client.Responses.Get(ctx, id, responses.ResponseGetParams{}, option.WithResponseInto(&hr)); err != nil ||
			hr.Header.Get("X-Relaygate-Upstream") != "b" {
			t.Errorf("retrieve %s: %v (upstream %q)", id, err, hr.Header.Get("X-Relaygate-Upstream"))
		}
	}
}

// TestResponsesStreamBreakAfterCommit: a stream cut after its first deltas
// cannot be retried; the SDK reads the gateway's response.failed event and
// then a broken stream, and the second upstream is never asked.
func TestResponsesStreamBreakAfterCommit(t *testing.T) {
	// created, in_progress, item added, part added, two deltas, cut.
	_, upA := responsesSim(t, "upstream-key-a", upstreamsim.Config{CompletionTokens: 8, CutRate: 1, CutAfterChunks: 6})
	simB, upB := responsesSim(t, "upstream-key-b", upstreamsim.Config{})
	gwSrv, gw, _ := responsesGateway(t, gwOpts{}, upA, upB)
	client := sdkClient(gwSrv.URL)

	stream := client.Responses.NewStreaming(context.Background(), responses.ResponseNewParams{Model: "m",
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hello")}})
	var types []string
	var failed responses.ResponseStreamEventUnion
	for stream.Next() {
		ev := stream.Current()
		types = append(types, ev.Type)
		if ev.Type == "response.failed" {
			failed = ev
		}
	}
	if stream.Err() == nil {
		t.Error("the SDK saw a cut stream end cleanly")
	}
	want := []string{"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
		"response.output_text.delta", "response.output_text.delta", "response.failed"}
	if strings.Join(types, " ") != strings.Join(want, " ") {
		t.Fatalf("events = %v, want %v", types, want)
	}
	if failed.Response.Status != "failed" || failed.Response.ID == "" || failed.SequenceNumber != 6 ||
		!strings.Contains(failed.Response.Error.Message, "broke after it began") {
		t.Errorf("response.failed = %+v", failed.Response)
	}
	if n := simB.Stats().Requests[upstreamsim.EndpointResponses]; n != 0 {
		t.Errorf("upstream b was asked %d times after the commit point", n)
	}
	waitMetric(t, gw.metrics, "relaygate_requests_total", map[string]string{"model": "m", "api": "responses", "upstream": "a", "code": "502"}, 1)
}
