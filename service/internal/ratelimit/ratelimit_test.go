package ratelimit

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaygate/relaygate/service/internal/testenv"
)

// testTimeout is a failure guard for each test's waits.
const testTimeout = 30 * time.Second

// The assertions below hold as long as each test runs in less than one
// refill interval (12s for RPM 5, 6s for TPM 10); the tests take milliseconds.

func newTestLimiter(t *testing.T, url string, limits Limits) *Limiter {
	t.Helper()
	l, err := New(Options{URL: url, Limits: limits, Timeout: time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// allow calls Allow and fails the test on a Redis error.
func allow(t *testing.T, ctx context.Context, l *Limiter, client string) Decision {
	t.Helper()
	d, err := l.Allow(ctx, client)
	if err != nil {
		t.Fatalf("Allow(%s): %v", client, err)
	}
	return d
}

func TestRPM(t *testing.T) {
	srv := testenv.StartRedis(t)
	l := newTestLimiter(t, srv.URL, Limits{RPM: 5})
	ctx := testContext(t)

	for i := range 5 {
		d := allow(t, ctx, l, "client-a")
		want := Decision{Allowed: true, Limit: LimitRPM, Remaining: 4 - i}
		if d != want {
			t.Fatalf("request %d: %+v, want %+v", i+1, d, want)
		}
	}
	d := allow(t, ctx, l, "client-a")
	if d.Allowed || d.Limit != LimitRPM || d.Remaining != 0 {
		t.Fatalf("6th request: %+v, want refused by rpm", d)
	}
	// One request refills every 60s/5 = 12s.
	if d.RetryAfter <= 0 || d.RetryAfter > 12*time.Second {
		t.Fatalf("6th request RetryAfter = %v, want in (0, 12s]", d.RetryAfter)
	}
	// Refusals take nothing: the next one waits no longer.
	if d2 := allow(t, ctx, l, "client-a"); d2.Allowed || d2.RetryAfter > d.RetryAfter {
		t.Fatalf("7th request: %+v, want refused with RetryAfter <= %v", d2, d.RetryAfter)
	}

	if d := allow(t, ctx, l, "client-b"); !d.Allowed || d.Remaining != 4 {
		t.Fatalf("another client: %+v, want its own full budget", d)
	}
}

func TestTPM(t *testing.T) {
	srv := testenv.StartRedis(t)
	l := newTestLimiter(t, srv.URL, Limits{TPM: 10})
	ctx := testContext(t)

	steps := []struct {
		add         int
		wantAllowed bool
	}{
		{0, true},   // nothing used
		{6, true},   // 6 of 10
		{3, true},   // 9 of 10: one token left
		{2, false},  // 11 of 10: over the budget
		{0, false},  // still in debt
		{-5, false}, // negative usage is ignored
	}
	for i, s := range steps {
		if err := l.AddTokens(ctx, "client-a", s.add); err != nil {
			t.Fatalf("step %d AddTokens(%d): %v", i, s.add, err)
		}
		d := allow(t, ctx, l, "client-a")
		if d.Allowed != s.wantAllowed || d.Limit != LimitTPM {
			t.Fatalf("step %d (added %d): %+v, want allowed=%v by tpm", i, s.add, d, s.wantAllowed)
		}
		if !d.Allowed && (d.RetryAfter <= 0 || d.RetryAfter > 12*time.Second) {
			t.Fatalf("step %d: RetryAfter = %v, want in (0, 12s]: 1 token refills every 6s", i, d.RetryAfter)
		}
	}

	if d := allow(t, ctx, l, "client-b"); !d.Allowed || d.Remaining != 10 {
		t.Fatalf("another client: %+v, want its own full budget", d)
	}
}

func TestTPMRefusalCostsNoRequest(t *testing.T) {
	srv := testenv.StartRedis(t)
	l := newTestLimiter(t, srv.URL, Limits{RPM: 5, TPM: 10})
	ctx := testContext(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })

	if err := l.AddTokens(ctx, "c", 50); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if d := allow(t, ctx, l, "c"); d.Allowed || d.Limit != LimitTPM {
			t.Fatalf("%+v, want refused by tpm", d)
		}
	}
	if n := rdb.Exists(ctx, bucketKey("c", LimitRPM)).Val(); n != 0 {
		t.Fatal("requests refused by TPM were taken from the RPM budget")
	}
}

func TestReplicasShareOneBudget(t *testing.T) {
	srv := testenv.StartRedis(t)
	limits := Limits{RPM: 5, TPM: 10}
	replicas := []*Limiter{newTestLimiter(t, srv.URL, limits), newTestLimiter(t, srv.URL, limits)}
	ctx := testContext(t)

	for i := range 5 {
		if d := allow(t, ctx, replicas[i%2], "shared"); !d.Allowed {
			t.Fatalf("request %d on replica %d refused: %+v", i+1, i%2, d)
		}
	}
	for i, r := range replicas {
		if d := allow(t, ctx, r, "shared"); d.Allowed || d.Limit != LimitRPM {
			t.Fatalf("replica %d allowed a 6th request: %+v", i, d)
		}
	}

	// Tokens recorded on one replica count on the other.
	if err := replicas[0].AddTokens(ctx, "tokens", 11); err != nil {
		t.Fatal(err)
	}
	if d := allow(t, ctx, replicas[1], "tokens"); d.Allowed || d.Limit != LimitTPM {
		t.Fatalf("replica 1 ignored tokens recorded on replica 0: %+v", d)
	}
}

func TestFailsOpenAndRecovers(t *testing.T) {
	srv := testenv.StartRedis(t)
	l := newTestLimiter(t, srv.URL, Limits{RPM: 5, TPM: 10})
	ctx := testContext(t)

	for range 5 {
		allow(t, ctx, l, "c")
	}
	if d := allow(t, ctx, l, "c"); d.Allowed {
		t.Fatalf("6th request allowed while Redis is up: %+v", d)
	}

	srv.Stop()
	d, err := l.Allow(ctx, "c")
	if err == nil || !d.Allowed {
		t.Fatalf("Allow with Redis down = %+v, %v; want allowed with an error", d, err)
	}
	if l.Status().Up {
		t.Fatal("Status is up while Redis is down")
	}
	if err := l.AddTokens(ctx, "c", 3); err == nil {
		t.Fatal("AddTokens with Redis down succeeded")
	}
	// Later calls still fail open, skipped or (once the back-off ends) probing.
	for range 10 {
		if d, err := l.Allow(ctx, "c"); !d.Allowed || err == nil {
			t.Fatalf("Allow while Redis is down = %+v, %v; want allowed with an error", d, err)
		}
	}

	srv.Restart() // empty: the budgets start full again
	for {
		if _, err := l.Allow(ctx, "c"); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("limiter never recovered after Redis restarted: %+v", l.Status())
		}
		time.Sleep(50 * time.Millisecond) // the back-off ends on its own clock
	}
	// The probe above took one request: four more, then refused.
	for i := range 4 {
		if d := allow(t, ctx, l, "c"); !d.Allowed {
			t.Fatalf("request %d after recovery refused: %+v", i+2, d)
		}
	}
	if d := allow(t, ctx, l, "c"); d.Allowed || d.Limit != LimitRPM {
		t.Fatalf("6th request after recovery: %+v, want refused by rpm", d)
	}
	if !l.Status().Up {
		t.Fatal("Status still down after recovery")
	}
}

func TestLimitsOffNeedNoRedis(t *testing.T) {
	srv := testenv.StartRedis(t)
	srv.Stop() // nothing answers here
	l := newTestLimiter(t, srv.URL, Limits{})
	ctx := testContext(t)
	d, err := l.Allow(ctx, "c")
	if err != nil || d != (Decision{Allowed: true}) {
		t.Fatalf("Allow with no limits = %+v, %v; want allowed, no error", d, err)
	}
	if err := l.AddTokens(ctx, "c", 100); err != nil {
		t.Fatalf("AddTokens with TPM off: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"negative rpm", Options{URL: "redis://127.0.0.1:1/0", Limits: Limits{RPM: -1}}, "negative"},
		{"negative tpm", Options{URL: "redis://127.0.0.1:1/0", Limits: Limits{TPM: -1}}, "negative"},
		{"empty URL", Options{Limits: Limits{RPM: 1}}, "URL is empty"},
		{"password not in errors", Options{URL: "redis://:topsecret@127.0.0.1:x/0", Limits: Limits{RPM: 1}}, "invalid port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "topsecret") {
				t.Fatalf("New error = %v, want one containing %q and no password", err, tt.wantErr)
			}
		})
	}
}
