// Package cache is the gateway's exact-match response cache in Redis: a
// deterministic request (see Key) that was answered once is answered again
// from Redis, without paying an upstream for it.
//
// The cache is an optimisation, never a dependency: every Redis call is
// bounded by a short timeout, and after a failure Redis is skipped for a
// back-off, so a slow or dead Redis turns hits into misses instead of slowing
// or failing requests.
package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaygate/relaygate/service/internal/redisguard"
)

// Result is the outcome of a lookup; its values are the label values of
// relaygate_cache_requests_total{result}.
type Result string

const (
	ResultHit   Result = "hit"
	ResultMiss  Result = "miss"
	ResultError Result = "error"
	// ResultBypass is for requests the gateway did not look up because Key
	// said they must not be cached; Get never returns it.
	ResultBypass Result = "bypass"
)

// Status is the cache's Redis state for /health.
type Status = redisguard.Status

// Options configures New.
type Options struct {
	// URL is the Redis URL (go-redis ParseURL syntax: redis://[user:pass@]host:port/db,
	// rediss:// for TLS). The password in it is never logged or returned in errors.
	URL string
	// TTL is how long an entry lives. Required.
	TTL time.Duration
	// Timeout bounds every Redis call; redisguard.DefaultTimeout (50ms) when zero.
	Timeout time.Duration
	// Logger gets outage and recovery lines; slog.Default when nil.
	Logger *slog.Logger
}

// Cache stores responses in Redis. It is safe for concurrent use.
type Cache struct {
	rdb    *redis.Client
	guard  *redisguard.Guard
	ttl    time.Duration
	logger *slog.Logger
}

// New returns a Cache for the Redis at opts.URL. It does not contact Redis,
// so the gateway starts while Redis is down and uses it once it is up.
func New(opts Options) (*Cache, error) {
	if opts.TTL <= 0 {
		return nil, fmt.Errorf("cache: TTL must be positive, got %s", opts.TTL)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	rdb, err := redisguard.NewClient(opts.URL, opts.Timeout)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	return &Cache{
		rdb:    rdb,
		guard:  redisguard.New(redisguard.Options{Name: "cache", Timeout: opts.Timeout, Logger: logger}),
		ttl:    opts.TTL,
		logger: logger,
	}, nil
}

// Get looks key up. A miss is (Entry{}, ResultMiss, nil). When Redis fails,
// is too slow or is being backed off from, it returns ResultError with the
// cause, and the request should go upstream as on a miss.
func (c *Cache) Get(ctx context.Context, key string) (Entry, Result, error) {
	var raw []byte
	err := c.guard.Do(ctx, func(ctx context.Context) error {
		var err error
		raw, err = c.rdb.Get(ctx, key).Bytes()
		if errors.Is(err, redis.Nil) {
			raw, err = nil, nil
		}
		return err
	})
	if err != nil {
		return Entry{}, ResultError, fmt.Errorf("cache get: %w", err)
	}
	if raw == nil {
		return Entry{}, ResultMiss, nil
	}
	e, err := decodeEntry(raw)
	if err != nil {
		// Written by another version of the format, or damaged: the answer
		// must come from upstream, and the Set that follows replaces it.
		c.logger.Warn("cache entry unreadable, treating as a miss", "err", err.Error())
		return Entry{}, ResultMiss, nil
	}
	return e, ResultHit, nil
}

// Set stores e under key for the configured TTL, replacing any entry there. A
// zero StoredAt is set to now.
func (c *Cache) Set(ctx context.Context, key string, e Entry) error {
	if e.StoredAt.IsZero() {
		e.StoredAt = time.Now()
	}
	raw := encodeEntry(e)
	err := c.guard.Do(ctx, func(ctx context.Context) error {
		return c.rdb.Set(ctx, key, raw, c.ttl).Err()
	})
	if err != nil {
		return fmt.Errorf("cache set: %w", err)
	}
	return nil
}

// Ping checks Redis through the same timeout and back-off as Get and Set, and
// updates Status. The gateway may call it at start-up to log whether the
// cache is usable before the first request.
func (c *Cache) Ping(ctx context.Context) error {
	err := c.guard.Do(ctx, func(ctx context.Context) error {
		return c.rdb.Ping(ctx).Err()
	})
	if err != nil {
		return fmt.Errorf("cache ping: %w", err)
	}
	return nil
}

// Status reports whether Redis answered the most recent calls.
func (c *Cache) Status() Status { return c.guard.Status() }

// Close releases the Redis connections.
func (c *Cache) Close() error {
	if err := c.rdb.Close(); err != nil {
		return fmt.Errorf("cache close: %w", err)
	}
	return nil
}
