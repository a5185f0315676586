package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	oai "github.com/openai/openai-go/v3"
	ooption "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
)

// messagesStep asks model through Anthropic's Messages API with the
// official Anthropic SDK, key as x-api-key, the way Claude Code does.
func messagesStep(ctx context.Context, base, key, model string) error {
	step("Anthropic Messages API (" + model + "), official Anthropic SDK, key as x-api-key")
	c := anthropic.NewClient(aoption.WithBaseURL(strings.TrimRight(base, "/")), aoption.WithAPIKey(key), aoption.WithMaxRetries(0))
	var hr *http.Response
	t0 := time.Now()
	m, err := c.Messages.New(ctx, anthropic.MessageNewParams{Model: anthropic.Model(model), MaxTokens: 64,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("In one sentence: why put a gateway in front of a model API?"))}},
		aoption.WithResponseInto(&hr))
	if err != nil {
		return notServed(err, "messages")
	}
	text := ""
	for _, b := range m.Content {
		text += b.Text
	}
	fmt.Printf("answer:   %s\n", text)
	fmt.Printf("upstream: %s   latency: %s   tokens: %d input + %d output (cache: %d written, %d read)\n",
		hr.Header.Get("X-Relaygate-Upstream"), time.Since(t0).Round(time.Millisecond),
		m.Usage.InputTokens, m.Usage.OutputTokens, m.Usage.CacheCreationInputTokens, m.Usage.CacheReadInputTokens)
	return nil
}

// responsesStep creates a response with the official OpenAI SDK's
// Responses API, then a follow-up by previous_response_id, which the
// gateway sends to the upstream that holds the first.
func responsesStep(ctx context.Context, base, key, model string) error {
	step("OpenAI Responses API (" + model + "), official OpenAI SDK, with a follow-up by previous_response_id")
	c := oai.NewClient(ooption.WithBaseURL(strings.TrimRight(base, "/")+"/v1/"), ooption.WithAPIKey(key), ooption.WithMaxRetries(0))
	var hr *http.Response
	t0 := time.Now()
	first, err := c.Responses.New(ctx, responses.ResponseNewParams{Model: model,
		Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("Name one reason to keep a fallback upstream.")}},
		ooption.WithResponseInto(&hr))
	if err != nil {
		return notServed(err, "responses")
	}
	fmt.Printf("answer:   %s\n", first.OutputText())
	fmt.Printf("id: %s   upstream: %s   latency: %s   tokens: %d input + %d output\n", first.ID,
		hr.Header.Get("X-Relaygate-Upstream"), time.Since(t0).Round(time.Millisecond), first.Usage.InputTokens, first.Usage.OutputTokens)
	next, err := c.Responses.New(ctx, responses.ResponseNewParams{Model: model, PreviousResponseID: oai.String(first.ID),
		Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("And one more.")}}, ooption.WithResponseInto(&hr))
	if err != nil {
		return fmt.Errorf("responses follow-up: %w", err)
	}
	fmt.Printf("follow-up %s went to %s, the upstream that holds %s\n", next.ID, hr.Header.Get("X-Relaygate-Upstream"), first.ID)
	return nil
}

// notServed turns the gateway's api_not_served answer (no upstream of the
// model's route declares the API, as with the real relay's config) into a
// line of the demo; any other failure stays an error.
func notServed(err error, api string) error {
	var ae *anthropic.Error
	var oe *oai.Error
	msg := ""
	switch {
	case errors.As(err, &ae) && ae.StatusCode == http.StatusBadRequest && strings.Contains(ae.RawJSON(), "is not served for the "+api+" API"):
		msg = ae.RawJSON()
	case errors.As(err, &oe) && oe.StatusCode == http.StatusBadRequest && oe.Code == "api_not_served":
		msg = oe.Message
	default:
		return fmt.Errorf("%s: %w", api, err)
	}
	fmt.Printf("not served by this config (the gateway's answer): %s\n", msg)
	return nil
}
