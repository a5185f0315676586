package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

func TestParseFlags(t *testing.T) {
	defaults := upstreamsim.Config{
		CompletionTokens: upstreamsim.DefaultCompletionTokens,
		TokensPerChunk:   upstreamsim.DefaultTokensPerChunk,
		EmbeddingDims:    upstreamsim.DefaultEmbeddingDims,
		FailureStatuses:  []int{upstreamsim.DefaultFailureStatus},
	}
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantListen string
		want       func(c *upstreamsim.Config)
		wantErr    string
	}{
		{name: "defaults", wantListen: "127.0.0.1:9001", want: func(*upstreamsim.Config) {}},
		{
			name: "every field",
			args: []string{
				"-listen", "127.0.0.1:0", "-models", "a, b,,c", "-api-key", "sk-flag", "-seed", "7",
				"-latency", "40ms", "-jitter", "5ms", "-chunk-delay", "2ms",
				"-completion-tokens", "32", "-tokens-per-chunk", "4", "-embedding-dims", "16",
				"-failure-rate", "0.1", "-failure-statuses", "503, 429", "-retry-after", "2s",
				"-hang-rate", "0.01", "-reset-rate", "0.02", "-cut-rate", "0.03", "-cut-after", "5",
				"-reasoning-tokens", "3", "-fail-after-created-rate", "0.04",
			},
			wantListen: "127.0.0.1:0",
			want: func(c *upstreamsim.Config) {
				*c = upstreamsim.Config{
					Models: []string{"a", "b", "c"}, APIKey: "sk-flag", Seed: 7,
					Latency: 40 * time.Millisecond, Jitter: 5 * time.Millisecond, ChunkDelay: 2 * time.Millisecond,
					CompletionTokens: 32, TokensPerChunk: 4, EmbeddingDims: 16,
					FailureRate: 0.1, FailureStatuses: []int{503, 429}, RetryAfter: 2 * time.Second,
					HangRate: 0.01, ResetRate: 0.02, CutRate: 0.03, CutAfterChunks: 5,
					ReasoningTokens: 3, FailAfterCreatedRate: 0.04,
				}
			},
		},
		{
			name: "key from the environment", env: map[string]string{envAPIKey: "sk-env"},
			wantListen: "127.0.0.1:9001", want: func(c *upstreamsim.Config) { c.APIKey = "sk-env" },
		},
		{
			name: "flag beats the environment", args: []string{"-api-key", "sk-flag"}, env: map[string]string{envAPIKey: "sk-env"},
			wantListen: "127.0.0.1:9001", want: func(c *upstreamsim.Config) { c.APIKey = "sk-flag" },
		},
		{name: "rate above 1", args: []string{"-failure-rate", "1.5"}, wantErr: "-failure-rate"},
		{name: "negative rate", args: []string{"-cut-rate", "-0.1"}, wantErr: "-cut-rate"},
		{name: "NaN rate", args: []string{"-hang-rate", "NaN"}, wantErr: "-hang-rate"},
		{name: "success status", args: []string{"-failure-statuses", "503,200"}, wantErr: "-failure-statuses"},
		{name: "status not a number", args: []string{"-failure-statuses", "5xx"}, wantErr: "-failure-statuses"},
		{name: "negative latency", args: []string{"-latency", "-1s"}, wantErr: "-latency"},
		{name: "zero tokens", args: []string{"-completion-tokens", "0"}, wantErr: "-completion-tokens"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected arguments"},
		{name: "unknown flag", args: []string{"-nope"}, wantErr: "not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr strings.Builder
			got, err := parseFlags(tc.args, func(k string) string { return tc.env[k] }, &stderr)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseFlags: %v (%s)", err, stderr.String())
			}
			want := defaults
			want.FailureStatuses = append([]int(nil), defaults.FailureStatuses...)
			tc.want(&want)
			if got.listen != tc.wantListen {
				t.Errorf("listen = %q, want %q", got.listen, tc.wantListen)
			}
			if !reflect.DeepEqual(got.cfg, want) {
				t.Errorf("config = %+v\nwant     %+v", got.cfg, want)
			}
		})
	}
}

// TestServeShutsDown serves a hanging request, then stops the server: the
// hang must be released once the grace is over, and serve must return.
func TestServeShutsDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sim := upstreamsim.New(upstreamsim.Config{HangRate: 1})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- serve(ctx, ln, sim, log, 0) }()

	base := "http://" + ln.Addr().String()
	client := &http.Client{Timeout: time.Minute} // a failure guard only
	t.Cleanup(client.CloseIdleConnections)

	resp, err := client.Get(base + "/v1/models")
	if err != nil {
		t.Fatalf("GET /v1/models: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/models: %s", resp.Status)
	}

	answered := make(chan error, 1)
	go func() {
		resp, err := client.Post(base+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
		if err == nil {
			resp.Body.Close()
		}
		answered <- err
	}()
	deadline := time.Now().Add(30 * time.Second)
	for sim.Stats().Faults[upstreamsim.FaultHang] == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the hanging request never arrived")
		}
		time.Sleep(2 * time.Millisecond)
	}

	stop()
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
	if err := <-answered; err == nil {
		t.Error("the hung request got an answer; want the connection closed")
	}
	if resp, err := client.Get(base + "/v1/models"); err == nil {
		resp.Body.Close()
		t.Error("server still answers after shutdown")
	}
}
