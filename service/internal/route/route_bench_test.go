package route

import (
	"context"
	"errors"
	"testing"
	"time"
)

// BenchmarkChainRun is the routing cost of one request with a trivial
// attempt: breaker checks, hooks and the outcome, without any I/O. Run with
//
//	go test -run '^$' -bench ChainRun -benchmem ./service/internal/route/
func BenchmarkChainRun(b *testing.B) {
	errDown := errors.New("HTTP 503")
	newChain := func(n int) Chain {
		var c Chain
		for i := range n {
			c = append(c, Target{
				Upstream: &Upstream{Name: string(rune('a' + i)), Breaker: NewBreaker(1<<30, time.Hour)},
				Price:    Price{InputPerMTok: 1, OutputPerMTok: 2},
			})
		}
		return c
	}
	hooks := Hooks{
		Attempt:  func(string, Attempt) {},
		Retry:    func(string) {},
		Fallback: func(string, string) {},
	}
	policy := Policy{Attempts: 1, BackoffMin: time.Millisecond, BackoffMax: time.Millisecond}
	tests := []struct {
		name  string
		chain Chain
		try   func(ctx context.Context, t *Target) Attempt
	}{
		{"first-answers", newChain(1), func(context.Context, *Target) Attempt { return Attempt{} }},
		{"fallback-to-second", newChain(2), func(_ context.Context, t *Target) Attempt {
			if t.Upstream.Name == "a" {
				return Attempt{Err: errDown, Retryable: true}
			}
			return Attempt{}
		}},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				out, err := tc.chain.Run(ctx, policy, hooks, tc.try)
				if err != nil || out.Target == nil {
					b.Fatalf("Run = %+v, %v", out, err)
				}
			}
		})
	}
}
