package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaygate/relaygate/service/internal/redisguard"
	"github.com/relaygate/relaygate/service/internal/testenv"
)

// testTimeout bounds each test's own waits. It is a failure guard: the
// operations it covers take milliseconds.
const testTimeout = 30 * time.Second

func newTestCache(t *testing.T, url string, ttl, timeout time.Duration) (*Cache, *testenv.SyncBuffer) {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	c, err := New(Options{
		URL:     url,
		TTL:     ttl,
		Timeout: timeout,
		Logger:  slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, logs
}

// setBackoff gives c a fixed back-off long enough that a loaded machine cannot
// outlast it between two calls that the test expects to be skipped.
func setBackoff(c *Cache, d time.Duration) {
	c.guard = redisguard.New(redisguard.Options{
		Name: "cache", Timeout: c.guard.Timeout(), MinBackoff: d, MaxBackoff: d, Logger: c.logger,
	})
}

// inspector is a plain client for looking at what the cache stored.
func inspector(t *testing.T, srv *testenv.Redis) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

func testContext(t *testing.T) context.Context { return testenv.Context(t, testTimeout) }

func TestCacheHitMissAndExactBodies(t *testing.T) {
	srv := testenv.StartRedis(t)
	c, _ := newTestCache(t, srv.URL, time.Hour, time.Second)
	ctx := testContext(t)

	if _, res, err := c.Get(ctx, KeyPrefix+"absent"); res != ResultMiss || err != nil {
		t.Fatalf("Get absent key = %s, %v; want miss", res, err)
	}

	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	storedAt := time.UnixMilli(1_750_000_000_123)
	tests := []struct {
		name string
		e    Entry
	}{
		{"chat completion", Entry{Body: []byte(contentCompletion), ContentType: "application/json", Upstream: "holysheep", StoredAt: storedAt}},
		{"every byte value", Entry{Body: allBytes, ContentType: "application/octet-stream", Upstream: "openai", StoredAt: storedAt}},
		{"trailing newline and spaces kept", Entry{Body: []byte("{\"a\": 1}\n  \n"), ContentType: "application/json", Upstream: "u", StoredAt: storedAt}},
		{"empty body", Entry{Body: []byte{}, ContentType: "application/json", Upstream: "u", StoredAt: storedAt}},
		{"large body", Entry{Body: bytes.Repeat([]byte("0123456789abcdef"), 64<<10), ContentType: "application/json", Upstream: "u", StoredAt: storedAt}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := fmt.Sprintf("%sentry-%d", KeyPrefix, i)
			if err := c.Set(ctx, key, tt.e); err != nil {
				t.Fatalf("Set: %v", err)
			}
			got, res, err := c.Get(ctx, key)
			if res != ResultHit || err != nil {
				t.Fatalf("Get = %s, %v; want hit", res, err)
			}
			if !bytes.Equal(got.Body, tt.e.Body) {
				t.Fatalf("body changed in the round trip: got %d bytes, want %d", len(got.Body), len(tt.e.Body))
			}
			if got.ContentType != tt.e.ContentType || got.Upstream != tt.e.Upstream || !got.StoredAt.Equal(tt.e.StoredAt) {
				t.Fatalf("entry = %q %q %v, want %q %q %v", got.ContentType, got.Upstream, got.StoredAt,
					tt.e.ContentType, tt.e.Upstream, tt.e.StoredAt)
			}
		})
	}

	t.Run("overwrite and zero StoredAt", func(t *testing.T) {
		key := KeyPrefix + "overwrite"
		before := time.Now().Add(-time.Second)
		for _, body := range []string{"first", "second"} {
			if err := c.Set(ctx, key, Entry{Body: []byte(body)}); err != nil {
				t.Fatalf("Set %s: %v", body, err)
			}
		}
		got, res, err := c.Get(ctx, key)
		if res != ResultHit || err != nil || string(got.Body) != "second" {
			t.Fatalf("Get = %q, %s, %v; want the second body", got.Body, res, err)
		}
		if got.StoredAt.Before(before) {
			t.Fatalf("zero StoredAt stored as %v, want about now", got.StoredAt)
		}
	})

	t.Run("damaged entry is a miss", func(t *testing.T) {
		key := KeyPrefix + "damaged"
		if err := inspector(t, srv).Set(ctx, key, "not an entry", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if _, res, err := c.Get(ctx, key); res != ResultMiss || err != nil {
			t.Fatalf("Get = %s, %v; want miss", res, err)
		}
	})

	t.Run("concurrent use", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for i := range 16 {
			wg.Go(func() {
				key := fmt.Sprintf("%sconcurrent-%d", KeyPrefix, i)
				body := []byte(strings.Repeat("x", i))
				if err := c.Set(ctx, key, Entry{Body: body}); err != nil {
					errs <- err
					return
				}
				got, res, err := c.Get(ctx, key)
				if err != nil || res != ResultHit || !bytes.Equal(got.Body, body) {
					errs <- fmt.Errorf("key %d: %s, %v, body %q", i, res, err, got.Body)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestCacheTTL(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := inspector(t, srv)
	ctx := testContext(t)
	// set stores an entry under key and returns the TTL Redis gave it.
	set := func(t *testing.T, c *Cache, key string) time.Duration {
		t.Helper()
		if err := c.Set(ctx, key, Entry{Body: []byte("x")}); err != nil {
			t.Fatalf("Set: %v", err)
		}
		ttl, err := rdb.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return ttl
	}

	t.Run("entries carry the configured TTL", func(t *testing.T) {
		c, _ := newTestCache(t, srv.URL, time.Hour, time.Second)
		ttl := set(t, c, KeyPrefix+"ttl-hour")
		// Redis's own clock counts down; only the upper side is exact.
		if ttl > time.Hour || ttl < 50*time.Minute {
			t.Fatalf("PTTL = %v, want just under 1h", ttl)
		}
	})

	t.Run("entries expire", func(t *testing.T) {
		const ttl = 300 * time.Millisecond
		c, _ := newTestCache(t, srv.URL, ttl, time.Second)
		key := KeyPrefix + "ttl-short"
		if left := set(t, c, key); left > ttl || left == -1 {
			t.Fatalf("PTTL = %v, want at most %v", left, ttl)
		}
		// Wait for Redis to expire it; the deadline is only a failure guard.
		for {
			_, res, err := c.Get(ctx, key)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if res == ResultMiss {
				break
			}
			if ctx.Err() != nil {
				t.Fatal("entry never expired")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

func TestCacheSurvivesRedisDeath(t *testing.T) {
	srv := testenv.StartRedis(t)
	c, logs := newTestCache(t, srv.URL, time.Hour, 100*time.Millisecond)
	setBackoff(c, 3*time.Second)
	ctx := testContext(t)
	key := KeyPrefix + "survivor"
	entry := Entry{Body: []byte(`{"ok":true}`), ContentType: "application/json", Upstream: "u"}

	if err := c.Set(ctx, key, entry); err != nil {
		t.Fatalf("Set while up: %v", err)
	}
	if _, res, _ := c.Get(ctx, key); res != ResultHit {
		t.Fatalf("Get while up = %s, want hit", res)
	}

	srv.Stop()
	_, res, err := c.Get(ctx, key)
	if res != ResultError || err == nil {
		t.Fatalf("Get after Redis died = %s, %v; want error", res, err)
	}
	if errors.Is(err, redisguard.ErrSkipped) {
		t.Fatalf("first Get after the death was skipped, want it tried: %v", err)
	}
	st := c.Status()
	if st.Up || st.LastError == "" {
		t.Fatalf("Status after failure = %+v, want down with a cause", st)
	}

	// Within the back-off, calls are answered without touching the network.
	for i := range 20 {
		_, res, err := c.Get(ctx, key)
		if res != ResultError || !errors.Is(err, redisguard.ErrSkipped) {
			t.Fatalf("Get %d during back-off = %s, %v; want a skipped error", i, res, err)
		}
		if err := c.Set(ctx, key, entry); !errors.Is(err, redisguard.ErrSkipped) {
			t.Fatalf("Set %d during back-off = %v; want a skipped error", i, err)
		}
	}
	if n := strings.Count(logs.String(), "redis unavailable"); n != 1 {
		t.Fatalf("%d outage log lines for one outage, want 1:\n%s", n, logs.String())
	}

	srv.Restart() // comes back empty: no persistence
	for {
		if err := c.Set(ctx, key, entry); err == nil {
			if _, res, err := c.Get(ctx, key); res == ResultHit {
				break
			} else if res == ResultMiss {
				t.Fatalf("Get after a successful Set = miss (%v)", err)
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("cache never recovered after Redis restarted; status %+v", c.Status())
		}
		time.Sleep(50 * time.Millisecond) // the back-off ends on its own clock
	}
	if st := c.Status(); !st.Up || st.LastError != "" {
		t.Fatalf("Status after recovery = %+v, want up", st)
	}
	if !strings.Contains(logs.String(), "redis reachable again") {
		t.Fatalf("recovery not logged:\n%s", logs.String())
	}
}

func TestCacheBoundsSlowRedis(t *testing.T) {
	srv := testenv.StartRedis(t)
	const timeout = 100 * time.Millisecond
	c, _ := newTestCache(t, srv.URL, time.Hour, timeout)
	setBackoff(c, time.Minute)
	ctx := testContext(t)
	key := KeyPrefix + "slow"
	if err := c.Set(ctx, key, Entry{Body: []byte("x")}); err != nil {
		t.Fatalf("Set while fast: %v", err)
	}

	// CLIENT PAUSE answers, then holds every other client's commands: a Redis
	// that accepts work and does not answer. The fixture kills it at the end.
	if err := inspector(t, srv).Do(ctx, "CLIENT", "PAUSE", "60000", "ALL").Err(); err != nil {
		t.Fatalf("CLIENT PAUSE: %v", err)
	}
	start := time.Now()
	_, res, err := c.Get(ctx, key)
	elapsed := time.Since(start)
	if res != ResultError || err == nil {
		t.Fatalf("Get from a paused Redis = %s, %v; want error", res, err)
	}
	// Generous: the point is that the call did not wait for the 60s pause.
	if elapsed > 10*time.Second {
		t.Fatalf("Get took %v against a %v timeout", elapsed, timeout)
	}
	if !strings.Contains(err.Error(), "no answer within 100ms") {
		t.Errorf("error does not say the call timed out: %v", err)
	}
	if err := c.Set(ctx, key, Entry{Body: []byte("y")}); !errors.Is(err, redisguard.ErrSkipped) {
		t.Fatalf("Set right after a timeout = %v; want a skipped error", err)
	}
}

func TestCacheNeverLeaksThePassword(t *testing.T) {
	srv := testenv.StartRedis(t)
	srv.Stop() // a port where nothing answers
	const secret = "hunter2-redis-secret"
	url := strings.Replace(srv.URL, "redis://", "redis://relaygate:"+secret+"@", 1)
	c, logs := newTestCache(t, url, time.Hour, 100*time.Millisecond)
	ctx := testContext(t)

	_, _, getErr := c.Get(ctx, KeyPrefix+"x")
	setErr := c.Set(ctx, KeyPrefix+"x", Entry{Body: []byte("x")})
	pingErr := c.Ping(ctx)
	for _, err := range []error{getErr, setErr, pingErr} {
		if err == nil {
			t.Fatal("call against a dead Redis succeeded")
		}
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("error leaks the password: %v", err)
		}
	}
	if strings.Contains(logs.String(), secret) || strings.Contains(c.Status().LastError, secret) {
		t.Fatalf("logs or status leak the password:\n%s\n%+v", logs.String(), c.Status())
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"Redis need not be up", Options{URL: "redis://127.0.0.1:1/0", TTL: time.Hour}, ""},
		{"zero TTL", Options{URL: "redis://127.0.0.1:1/0"}, "TTL must be positive"},
		{"empty URL", Options{TTL: time.Hour}, "URL is empty"},
		{"bad URL", Options{URL: "redis://:pw@127.0.0.1:x/0", TTL: time.Hour}, "invalid port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.opts)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				_ = c.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestFullRedisStillServesHits: a Redis at its maxmemory under noeviction
// refuses writes (OOM) but answers reads. Its refusals must not switch the
// cache off: what it holds is still served, and the log says so once.
func TestFullRedisStillServesHits(t *testing.T) {
	srv := testenv.StartRedis(t)
	c, logs := newTestCache(t, srv.URL, time.Hour, time.Second)
	ctx := testContext(t)
	key := KeyPrefix + "kept"
	if err := c.Set(ctx, key, Entry{Body: []byte("x")}); err != nil {
		t.Fatalf("Set: %v", err)
	}
	opt, err := redis.ParseURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := c.Set(ctx, fmt.Sprintf("%sfull-%d", KeyPrefix, i), Entry{Body: []byte("y")}); err == nil || !strings.Contains(err.Error(), "OOM") {
			t.Fatalf("Set into a full Redis: %v, want its OOM refusal", err)
		}
		if _, res, err := c.Get(ctx, key); res != ResultHit {
			t.Fatalf("Get after refusal %d: %s, %v; a full Redis still serves what it holds", i, res, err)
		}
	}
	if n := strings.Count(logs.String(), "redis refused a command"); n != 1 {
		t.Errorf("%d refusal lines logged for 5 refusals, want 1:\n%s", n, logs.String())
	}
	if strings.Contains(logs.String(), "unavailable") {
		t.Errorf("a full Redis was logged as unavailable:\n%s", logs.String())
	}
}
