package budget

import (
	"context"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/testenv"
)

// BenchmarkEnforcer is the Redis side of a request's limits and budgets on
// loopback: Admit (before the request), Charge (after its answer) and,
// for scale, a bare PING round trip on the same client.
func BenchmarkEnforcer(b *testing.B) {
	rds := testenv.StartRedis(b)
	e, err := New(Options{URL: rds.URL, Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.Close() })
	sub := benchSubject()
	ctx := context.Background()
	b.Run("ping", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := e.rdb.Ping(ctx).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("admit", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if d, err := e.Admit(ctx, sub); err != nil || !d.Allowed {
				b.Fatal(d, err)
			}
		}
	})
	b.Run("charge", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := e.Charge(ctx, sub, 12, 20); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchSubject() *Subject {
	l := Limits{RPM: 1e9, TPM: 1e12, Budget: ToMicros(1e9), Period: config.PeriodDay}
	return &Subject{Key: Scope{Name: "k", Limits: l}, Team: &Scope{Name: "t", Limits: l}}
}
