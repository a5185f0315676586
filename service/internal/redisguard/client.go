// Package redisguard keeps Redis off the request path's critical budget. The
// response cache and the rate limiter both sit in front of every request, so
// a slow or dead Redis must cost each request at most a small fixed timeout,
// and then nothing at all until Redis is back.
//
// NewClient builds a go-redis client whose every wait is bounded by that
// timeout; Guard runs each call under it, stops calling a failed Redis for a
// growing back-off (letting one probe through when it ends), logs the outage
// once per interval instead of once per request, and reports the state for
// /health.
package redisguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultTimeout bounds a Redis call when the caller gives no timeout. A
// healthy Redis on the same network answers in well under a millisecond.
const DefaultTimeout = 50 * time.Millisecond

// NewClient parses a redis://, rediss:// or unix:// URL (go-redis ParseURL
// syntax) and returns a client whose dials, reads, writes and waits for a
// pooled connection all give up after timeout. It does not contact Redis.
// Errors never contain the URL, which may carry a password.
func NewClient(rawURL string, timeout time.Duration) (*redis.Client, error) {
	if rawURL == "" {
		return nil, errors.New("redis URL is empty")
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse redis URL: %w", redactURLError(err))
	}
	// The context deadline each Guard call sets is the real bound; the socket
	// timeouts repeat it so a call with no deadline cannot hang either.
	opts.ContextTimeoutEnabled = true
	opts.DialTimeout = timeout
	opts.ReadTimeout = timeout
	opts.WriteTimeout = timeout
	opts.PoolTimeout = timeout
	// One retry lets a command that met a connection Redis closed (after a
	// restart) go out again on a fresh one, still inside the same deadline.
	opts.MaxRetries = 1
	// go-redis retries a refused dial five times by default, which spends the
	// whole deadline and hides the cause ("connection refused") behind
	// "context deadline exceeded". The Guard's back-off does the retrying.
	opts.DialerRetries = 1
	return redis.NewClient(opts), nil
}

// redactURLError drops the URL from net/url's parse errors, whose message
// quotes the whole input, password included. go-redis's own URL errors name
// only the scheme, path or query parameter at fault.
func redactURLError(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return fmt.Errorf("invalid URL: %w", uerr.Err)
	}
	return err
}

// RouteClientLogs sends go-redis's own log lines, which otherwise go to stderr
// unformatted, to logger at debug level. They repeat what the Guard already
// reports once per interval (a failed dial on every probe), so debug keeps
// them available without flooding. go-redis has one logger per process, so
// the program's main calls this once; libraries must not.
func RouteClientLogs(logger *slog.Logger) {
	redis.SetLogger(clientLogger{logger})
}

type clientLogger struct{ logger *slog.Logger }

func (l clientLogger) Printf(ctx context.Context, format string, v ...any) {
	l.logger.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
}
