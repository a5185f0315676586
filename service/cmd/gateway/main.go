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
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/relaygate/relaygate/service/internal/app"
	"github.com/relaygate/relaygate/service/internal/config"
	"github.com/relaygate/relaygate/service/internal/gateway"
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

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	srv := &http.Server{
		Handler:           gw,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("gateway listening", "addr", ln.Addr().String(), "config", configPath,
		"models", len(cfg.Models), "upstreams", len(cfg.Upstreams), "version", version())

	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(ln) }()
	var admin *http.Server
	if cfg.Admin.Listen != "" {
		aln, err := net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			return fmt.Errorf("listen admin %s: %w", cfg.Admin.Listen, err)
		}
		admin = &http.Server{Handler: gw.AdminHandler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: srv.ErrorLog}
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
			return shutdown(log, gw, srv, cfg.ShutdownDelay.D(), cfg.ShutdownTimeout.D(), sig, sigs)
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

// shutdown drains the gateway after sig. A second SIGTERM or SIGINT on
// sigs ends the wait at once and cuts what is still running: an operator
// pressing Ctrl-C again means it.
func shutdown(log *slog.Logger, gw *gateway.Server, srv *http.Server, delay, timeout time.Duration, sig os.Signal, sigs <-chan os.Signal) error {
	log.Info("shutting down: finishing requests in flight", "signal", sig.String(), "delay", delay.String(), "deadline", timeout.String())
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
	if delay > 0 {
		// Still serving, with /ready failing and Connection: close on
		// every answer, while load balancers notice.
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	sctx, scancel := context.WithTimeout(ctx, timeout)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			return fmt.Errorf("shutdown: requests still running after %s were cut", timeout)
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
