package bench

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// The floor proxy runs as a child process like every other subject, so it
// does not share the load generator's scheduler and heap. The suite starts
// its own executable again with this variable set; main (and TestMain in
// the smoke test) hand over to RunChildIfAsked first thing.
const (
	roleEnv        = "RELAYBENCH_ROLE"
	roleFloorProxy = "floorproxy"
)

// floorIdleConns matches the gateway's default keep-alive pool per
// upstream (max_idle_conns), so the floor is not slowed by reconnecting.
const floorIdleConns = 256

// RunChildIfAsked runs the floor proxy and exits when this process was
// started as one by the suite; otherwise it returns at once. Call it first
// in main and in TestMain.
func RunChildIfAsked() {
	if os.Getenv(roleEnv) != roleFloorProxy {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := runFloorProxy(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "floorproxy:", err)
		stop()
		os.Exit(1)
	}
	stop()
	os.Exit(0)
}

// listenFlags collects repeated -route ADDR=URL flags.
type listenFlags []string

func (l *listenFlags) String() string     { return strings.Join(*l, ",") }
func (l *listenFlags) Set(v string) error { *l = append(*l, v); return nil }

// runFloorProxy serves one plain httputil.ReverseProxy per -route
// ADDR=UPSTREAM_URL until ctx ends.
func runFloorProxy(ctx context.Context, args []string) error {
	var routes listenFlags
	fs := flag.NewFlagSet("floorproxy", flag.ContinueOnError)
	fs.Var(&routes, "route", "ADDR=URL: listen on ADDR and proxy to URL (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(routes) == 0 {
		return errors.New("no -route given")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	errc := make(chan error, len(routes))
	var servers []*http.Server
	for _, r := range routes {
		addr, raw, ok := strings.Cut(r, "=")
		if !ok {
			return fmt.Errorf("-route %q: want ADDR=URL", r)
		}
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return fmt.Errorf("-route %q: bad upstream URL", r)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		srv := &http.Server{
			Handler:           NewFloorProxy(u),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       120 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		servers = append(servers, srv)
		go func() { errc <- srv.Serve(ln) }()
		log.Info("floor proxy listening", "addr", ln.Addr().String(), "upstream", u.Redacted())
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	return nil
}

// NewFloorProxy is the floor a Go proxy can reach: a stock
// httputil.ReverseProxy with a keep-alive pool and nothing else (no auth,
// no parsing, no metrics, no logs). What the gateway adds above it is the
// cost of its features, not of Go's HTTP stack. ReverseProxy flushes
// text/event-stream answers as they arrive, so streams are relayed at once.
//
// The request body is read before proxying, as the gateway reads it: Go's
// HTTP/1 server closes an inbound body once the response starts, and a
// ReverseProxy still streaming that body to an upstream that answers fast
// (a stream's first chunk) then loses the upstream connection mid-answer
// (golang/go#40747).
func NewFloorProxy(upstream *url.URL) http.Handler {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(upstream) },
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: floorIdleConns,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, floorMaxBody))
		if err != nil {
			http.Error(w, "reading request body: "+err.Error(), http.StatusBadRequest)
			return
		}
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		rp.ServeHTTP(w, r)
	})
}

// floorMaxBody matches the gateway's default max_body_bytes.
const floorMaxBody = 10 << 20
