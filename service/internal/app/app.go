// Package app assembles a running gateway from its configuration: metrics,
// the Redis cache and rate limiter, the GPU monitor and the HTTP handler.
// The gateway command, the smoke test's local runs and integration tests
// all build it the same way, so what is tested is what runs.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/cache"
	"github.com/relaygate/relaygate/service/internal/gateway"
	"github.com/relaygate/relaygate/service/internal/gpu"
	"github.com/relaygate/relaygate/service/internal/ledger"
	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/ratelimit"
	"github.com/relaygate/relaygate/service/internal/redisguard"
	"github.com/relaygate/relaygate/service/internal/respids"
)

// App is a gateway and everything it runs beside.
type App struct {
	Gateway *gateway.Server
	Metrics *metrics.Metrics
	GPU     *gpu.Monitor

	cfg     *config.Config
	log     *slog.Logger
	cache   *cache.Cache
	limiter *ratelimit.Limiter
	respIDs *respids.Store
	// Ledger is the usage ledger; nil when ledger.postgres_url is unset.
	Ledger *ledger.Ledger
	stop   context.CancelFunc
	wg     sync.WaitGroup
}

// Option adjusts how New builds the app.
type Option func(*options)

type options struct{ version string }

// WithVersion sets the version /health reports.
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// New builds the app. Redis need not be up: the cache and the limiter
// connect lazily and degrade while it is down. The GPU monitor starts
// refreshing in the background until Close.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger, opts ...Option) (*App, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	if log == nil {
		log = slog.Default()
	}
	a := &App{cfg: cfg, log: log, Metrics: metrics.New()}
	var err error
	if cfg.Cache.RedisURL != "" {
		a.cache, err = cache.New(cache.Options{URL: cfg.Cache.RedisURL, TTL: cfg.Cache.TTL.D(), Timeout: cfg.Cache.Timeout.D(), Logger: log})
		if err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
	}
	if cfg.RateLimit.RPM > 0 || cfg.RateLimit.TPM > 0 {
		a.limiter, err = ratelimit.New(ratelimit.Options{URL: cfg.Cache.RedisURL, Timeout: cfg.Cache.Timeout.D(), Logger: log,
			Limits: ratelimit.Limits{RPM: cfg.RateLimit.RPM, TPM: cfg.RateLimit.TPM}})
		if err != nil {
			a.closeRedis()
			return nil, fmt.Errorf("rate limit: %w", err)
		}
	}
	// Response ids live in the cache's Redis, when there is one, so that
	// every replica sends a response's follow-ups to its upstream.
	a.respIDs, err = respids.New(respids.Options{RedisURL: cfg.Cache.RedisURL, Timeout: cfg.Cache.Timeout.D(), Logger: log,
		OnLocal: a.Metrics.ResponseIDLocal})
	if err != nil {
		a.closeRedis()
		return nil, fmt.Errorf("response ids: %w", err)
	}
	if cfg.Ledger.Enabled() {
		// Postgres need not be up: rows spill to disk until it is.
		l := cfg.Ledger
		a.Ledger, err = ledger.Open(ctx, ledger.Options{URL: l.PostgresURL, SpillDir: l.SpillDir,
			BatchInterval: l.BatchInterval.D(), BatchRows: l.BatchRows, QueueRows: l.QueueRows,
			FsyncInterval: l.FsyncInterval.D(), WriteTimeout: l.WriteTimeout.D(), Logger: log, Registerer: a.Metrics.Registry})
		if err != nil {
			a.closeRedis()
			return nil, err
		}
	}
	a.GPU = gpu.NewMonitor(gpu.Options{Interval: cfg.GPU.Interval.D(), ExpectedCount: cfg.GPU.ExpectedCount, Logger: log})
	a.Metrics.Registry.MustRegister(a.GPU.Collector())

	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	a.stop = stop
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.GPU.Run(runCtx) }()

	gopts := gateway.Options{Logger: log, Metrics: a.Metrics, Version: o.version,
		Cache: a.cache, Limiter: a.limiter, GPU: a.GPU, ResponseIDs: a.respIDs}
	if a.Ledger != nil {
		gopts.Ledger = a.Ledger
	}
	a.Gateway = gateway.New(cfg, gopts)
	return a, nil
}

// Handler is the gateway's whole HTTP API.
func (a *App) Handler() http.Handler { return a.Gateway }

// Reload swaps routing, keys and models for cfg's. Cache, rate-limit and
// GPU settings are fixed at start; a change to them is logged as needing a
// restart rather than half-applied.
func (a *App) Reload(cfg *config.Config) {
	// What was bound or built at start keeps its running value, so that
	// the gateway's view agrees with what runs: a new admin.listen would
	// otherwise take /metrics off the main listener with no admin
	// listener started, and a new rate_limit would be half applied.
	var restart []string
	keep := func(name string, changed bool, carry func()) {
		if changed {
			restart = append(restart, name)
			carry()
		}
	}
	old := a.cfg
	keep("listen", cfg.Listen != old.Listen, func() { cfg.Listen = old.Listen })
	keep("admin.listen", cfg.Admin.Listen != old.Admin.Listen, func() { cfg.Admin.Listen = old.Admin.Listen })
	keep("shutdown_delay", cfg.ShutdownDelay != old.ShutdownDelay, func() { cfg.ShutdownDelay = old.ShutdownDelay })
	keep("shutdown_timeout", cfg.ShutdownTimeout != old.ShutdownTimeout, func() { cfg.ShutdownTimeout = old.ShutdownTimeout })
	keep("shutdown_idle_timeout", cfg.ShutdownIdleTimeout != old.ShutdownIdleTimeout, func() { cfg.ShutdownIdleTimeout = old.ShutdownIdleTimeout })
	keep("read_header_timeout", cfg.ReadHeaderTimeout != old.ReadHeaderTimeout, func() { cfg.ReadHeaderTimeout = old.ReadHeaderTimeout })
	keep("idle_timeout", cfg.IdleTimeout != old.IdleTimeout, func() { cfg.IdleTimeout = old.IdleTimeout })
	keep("max_connections", cfg.MaxConnections != old.MaxConnections, func() { cfg.MaxConnections = old.MaxConnections })
	keep("max_connections_per_ip", cfg.MaxConnectionsPerIP != old.MaxConnectionsPerIP, func() { cfg.MaxConnectionsPerIP = old.MaxConnectionsPerIP })
	keep("log.level", cfg.Log.Level != old.Log.Level, func() { cfg.Log.Level = old.Log.Level })
	keep("cache", cfg.Cache != old.Cache, func() { cfg.Cache = old.Cache })
	keep("rate_limit", cfg.RateLimit != old.RateLimit, func() { cfg.RateLimit = old.RateLimit })
	keep("gpu", cfg.GPU != old.GPU, func() { cfg.GPU = old.GPU })
	keep("ledger", cfg.Ledger != old.Ledger, func() { cfg.Ledger = old.Ledger })
	if len(restart) > 0 {
		a.log.Warn("config reload: these settings take effect only after a restart; their running values are kept",
			"settings", strings.Join(restart, ", "))
	}
	a.Gateway.Reload(cfg)
	a.cfg = cfg
}

// Close stops the GPU monitor, flushes the ledger and closes the Redis
// clients. Called after the drain, so every request's row is queued.
func (a *App) Close() error {
	a.stop()
	a.wg.Wait()
	var lerr error
	if a.Ledger != nil {
		// Rows Postgres does not take in time go to the spill file, for
		// the next start to replay.
		ctx, cancel := context.WithTimeout(context.Background(), 2*a.cfg.Ledger.WriteTimeout.D())
		lerr = a.Ledger.Close(ctx)
		cancel()
	}
	return errors.Join(lerr, a.closeRedis())
}

func (a *App) closeRedis() error {
	var errs []error
	if a.cache != nil {
		errs = append(errs, a.cache.Close())
	}
	if a.limiter != nil {
		errs = append(errs, a.limiter.Close())
	}
	if a.respIDs != nil {
		errs = append(errs, a.respIDs.Close())
	}
	return errors.Join(errs...)
}

// RouteRedisLogs sends the Redis client's own log lines to log; the
// process's main calls it once.
func RouteRedisLogs(log *slog.Logger) { redisguard.RouteClientLogs(log) }
