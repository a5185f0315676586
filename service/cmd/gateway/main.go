// Command gateway runs Relaygate's OpenAI-compatible inference gateway.
//
//	gateway -config config/gateway.yaml
//
// SIGTERM or SIGINT drains: /ready fails, the listener closes, requests and
// streams in flight finish within shutdown_timeout. SIGHUP reloads the
// config file; a broken new file is refused and the running config kept.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/relaygate/relaygate/internal/ctxsleep"
	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/app"
	"github.com/relaygate/relaygate/service/internal/gateway"
	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/netlimit"
)

func main() {
	defaultConfig := os.Getenv("GATEWAY_CONFIG")
	if defaultConfig == "" {
		defaultConfig = "config/gateway.yaml"
	}
	configPath := flag.String("config", defaultConfig, "configuration file (default $GATEWAY_CONFIG or config/gateway.yaml)")
	healthcheck := flag.Bool("healthcheck", false, "probe a running gateway's /health and exit 0 when it answers 200 (for container health checks)")
	healthURL := flag.String("healthcheck-url", "http://127.0.0.1:8000/health", "URL probed by -healthcheck")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()

	if *showVersion {
		fmt.Println(version())
		return
	}
	if *healthcheck {
		os.Exit(probe(*healthURL))
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	if err := run(*configPath, sigs, nil); err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

// run serves until a terminating signal arrives on sigs; started, when set,
// is told the listening address.
func run(configPath string, sigs <-chan os.Signal, started func(net.Addr)) error {
	cfg, err := config.LoadFile(configPath)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log.Level)
	slog.SetDefault(log)

	app.RouteRedisLogs(log)
	a, err := app.New(context.Background(), cfg, log, app.WithVersion(version()))
	if err != nil {
		return err
	}
	defer a.Close()
	gw := a.Gateway

	limits := connLimits(cfg)
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	ln, srv, err := listen(cfg, cfg.Listen, gw, limits, a.Metrics, "api", errLog)
	if err != nil {
		return err
	}
	log.Info("gateway listening", "addr", ln.Addr().String(), "config", configPath,
		"models", len(cfg.Models), "upstreams", len(cfg.Upstreams), "version", version(),
		"max_connections", limits.Max, "max_connections_per_ip", limits.MaxPerIP)

	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(ln) }()
	var admin *http.Server
	if cfg.Admin.Listen != "" {
		aln, asrv, err := listen(cfg, cfg.Admin.Listen, gw.AdminHandler(), limits, a.Metrics, "admin", errLog)
		if err != nil {
			_ = ln.Close()
			return err
		}
		admin = asrv
		go func() { serveErr <- admin.Serve(aln) }()
		log.Info("admin endpoints (/metrics, /health details) listening", "addr", aln.Addr().String())
	}
	if started != nil {
		started(ln.Addr())
	}
	for {
		select {
		case err := <-serveErr:
			return fmt.Errorf("serve: %w", err)
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				reload(log, a, configPath)
				continue
			}
			if admin != nil {
				// The admin listener goes last, so /metrics covers the drain.
				defer admin.Close()
			}
			return shutdown(log, gw, srv, ln, drainTimes{cfg.ShutdownDelay.D(), cfg.ShutdownTimeout.D(), cfg.ShutdownIdleTimeout.D()}, sig, sigs)
		}
	}
}

func reload(log *slog.Logger, a *app.App, path string) {
	cfg, err := config.LoadFile(path)
	if err != nil {
		log.Error("config reload refused; still running the previous config", "error", err.Error())
		return
	}
	a.Reload(cfg)
	log.Info("config reloaded", "config", path, "models", len(cfg.Models), "upstreams", len(cfg.Upstreams))
}

// listen opens addr for h with every phase of a connection bounded: the
// request headers (read_header_timeout), the body (body_read_timeout, in
// the handler), the wait for a next request (idle_timeout), and the number
// of connections (max_connections, max_connections_per_ip).
func listen(cfg *config.Config, addr string, h http.Handler, limits netlimit.Limits, m *metrics.Metrics, name string, errLog *stdlog.Logger) (*netlimit.Listener, *http.Server, error) {
	inner, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen %s %s: %w", name, addr, err)
	}
	ln := netlimit.Wrap(inner, limits)
	if m != nil {
		open := m.Connections(name)
		ln.OnOpen = func(d int) { open.Add(float64(d)) }
		ln.OnRefuse = func(reason string) { m.ConnectionRefused(name, reason) }
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout.D(),
		IdleTimeout:       cfg.IdleTimeout.D(),
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          errLog,
		ConnState:         ln.ConnState,
	}
	return ln, srv, nil
}

// connLimits resolves max_connections: 0 is half the process's open-file
// limit (Go raises the soft limit to the hard one at start), so that a
// flood of clients leaves descriptors for the upstream connections their
// requests need, for Redis, and for accepting /health.
func connLimits(cfg *config.Config) netlimit.Limits {
	l := netlimit.Limits{Max: cfg.MaxConnections, MaxPerIP: cfg.MaxConnectionsPerIP}
	switch {
	case l.Max < 0:
		l.Max = 0 // no limit
	case l.Max == 0:
		var r syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err == nil && r.Cur > 0 {
			const reserve = 64 // log, listeners, Redis, probes
			l.Max = int(max(min(r.Cur, 1<<22)/2, 2*reserve) - reserve)
		}
	}
	return l
}

// drainTimes are a drain's settings: shutdown_delay, shutdown_timeout,
// shutdown_idle_timeout.
type drainTimes struct{ delay, timeout, idle time.Duration }

// shutdown drains the gateway after sig. A second SIGTERM or SIGINT on
// sigs ends the wait at once and cuts what is still running: an operator
// pressing Ctrl-C again means it.
//
// Keep-alive connections are not closed under their clients: every answer
// once draining says Connection: close, so a client closes its connection
// after its next answer, and the gateway closes one itself only once it
// has been idle for shutdown_idle_timeout, or at the deadline. Closing an
// idle connection at once (as http.Server.Shutdown does) races with a
// client sending its next request on it, which then fails unread.
func shutdown(log *slog.Logger, gw *gateway.Server, srv *http.Server, ln *netlimit.Listener, d drainTimes, sig os.Signal, sigs <-chan os.Signal) error {
	log.Info("shutting down: finishing requests in flight", "signal", sig.String(), "delay", d.delay.String(), "deadline", d.timeout.String())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGHUP {
					continue // no reload while draining
				}
				log.Warn("second signal: cutting the requests still in flight", "signal", s.String())
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	gw.Drain()
	// Still serving, with /ready failing and Connection: close on every
	// answer, while load balancers notice.
	ctxsleep.Sleep(ctx, d.delay)
	sctx, scancel := context.WithTimeout(ctx, d.timeout)
	defer scancel()
	// New connections are refused from here; srv.Serve returns an error
	// for the closed listener, which nobody reads any more.
	_ = ln.Close()
	tick := time.NewTicker(min(max(d.idle/10, time.Millisecond), 50*time.Millisecond))
	for ln.CloseIdle(d.idle) > 0 && sctx.Err() == nil {
		select {
		case <-tick.C:
		case <-sctx.Done():
		}
	}
	tick.Stop()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			return fmt.Errorf("shutdown: requests still running after %s were cut", d.timeout)
		case errors.Is(err, context.Canceled):
			return errors.New("shutdown: a second signal cut the requests still running")
		}
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("shutdown complete")
	return nil
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func probe(url string) int {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, "healthcheck:", resp.Status)
		return 1
	}
	return 0
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return s.Value[:12]
			}
		}
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
	}
	return "dev"
}
