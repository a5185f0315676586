package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// role is which simulator a request is meant for; each runs with the
// latency and faults its scenarios need.
type role string

const (
	roleFast   role = "fast"   // answers at once
	roleStream role = "stream" // streams with a pause between chunks
	roleIdle   role = "idle"   // sends the first chunk, then nothing for an hour
	roleFail   role = "fail"   // answers every request with 503
	// roleFallback is the gateway's route [fail, fast]; the other
	// subjects go straight to the fast simulator, where the fallback ends.
	roleFallback role = "fallback"
)

// Subject names, as the report prints them.
const (
	subjectDirect       = "direct"
	subjectGateway      = "gateway"
	subjectGatewayCache = "gateway+cache"
	subjectGoProxy      = "go-proxy"
	subjectNginx        = "nginx"
)

// subject is one system under test: the simulator itself, a gateway, the
// floor proxy or nginx. Each has its own HTTP client, so its keep-alive
// connections last across rounds.
type subject struct {
	name string
	// bases maps a simulator role to the URL (scheme://host:port) that
	// reaches it through this subject.
	bases map[role]string
	// auth is the Authorization header the subject wants: the gateway's
	// client key, or the simulators' key passed through by the proxies.
	auth string
	// gateway subjects route by model name; the others ignore it.
	gateway bool
	// proxy subjects hold an upstream connection per client connection.
	proxy bool
	// metricsURL is the gateway's /metrics (empty for the others).
	metricsURL string
	// pids returns the processes that make up the subject when it serves
	// role: their resident sets and CPU times are the subject's.
	pids   func(role) []int
	client *http.Client
}

func (s *subject) url(r role, path string) string {
	if s.gateway {
		return s.bases[roleFast] + path
	}
	return s.bases[r.simulator()] + path
}

// simulator is the simulator that answers role for a subject without a
// route: the fallback's last resort is the fast one.
func (r role) simulator() role {
	if r == roleFallback {
		return roleFast
	}
	return r
}

// model is the model name a request for r carries; the gateway's config
// routes each name to its simulator(s).
func (r role) model() string { return "bench-" + string(r) }

// rss sums the resident sets of the subject's processes.
func (s *subject) rss(r role) (int64, error) {
	var total int64
	for _, pid := range s.pids(r) {
		n, err := rssBytes(pid)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", s.name, err)
		}
		total += n
	}
	return total, nil
}

// stackOptions are what the stack needs from the suite's Config.
type stackOptions struct {
	binDir     string
	workDir    string
	nginx      string // binary; empty: no nginx subject
	redis      string // redis-server binary
	chunkDelay time.Duration
	tokens     int
	nofile     uint64
}

// stack is every process the suite runs, and the subjects they make up.
type stack struct {
	children []*child
	subjects map[string]*subject
	order    []string // subjects in report order
	sims     map[role]*child
	gateways map[string]*child
}

// startStack starts simulators, redis-server, the two gateways, the floor
// proxy and nginx (when there is one), each on free loopback ports. On
// error everything already started is stopped.
func startStack(ctx context.Context, o stackOptions) (_ *stack, err error) {
	st := &stack{subjects: map[string]*subject{}, sims: map[role]*child{}, gateways: map[string]*child{}}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	clientKey, upstreamKey := secret("rg-bench-client-"), secret("rg-bench-upstream-")
	env := []string{"UPSTREAM_SIM_API_KEY=" + upstreamKey}

	simArgs := map[role][]string{
		roleFast:   {"-completion-tokens", strconv.Itoa(o.tokens)},
		roleStream: {"-completion-tokens", strconv.Itoa(o.tokens), "-chunk-delay", o.chunkDelay.String()},
		roleIdle:   {"-completion-tokens", "1", "-chunk-delay", "1h"},
		roleFail:   {"-failure-rate", "1", "-failure-statuses", "503"},
	}
	simAddr := map[role]string{}
	for _, r := range []role{roleFast, roleStream, roleIdle, roleFail} {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := loopback(port)
		args := append([]string{"-listen", addr, "-seed", "1"}, simArgs[r]...)
		c, err := st.start(ctx, "sim-"+string(r), o.workDir, filepath.Join(o.binDir, "upstream-sim"), args, env,
			httpReady("http://"+addr+"/sim/stats"))
		if err != nil {
			return nil, err
		}
		st.sims[r], simAddr[r] = c, addr
	}
	simBases := map[role]string{}
	for r, a := range simAddr {
		simBases[r] = "http://" + a
	}
	st.add(&subject{name: subjectDirect, bases: simBases, auth: "Bearer " + upstreamKey,
		pids: func(r role) []int { return []int{st.sims[r.simulator()].pid()} }})

	redisPort, err := freePort()
	if err != nil {
		return nil, err
	}
	redisAddr := loopback(redisPort)
	if _, err := st.start(ctx, "redis", o.workDir, o.redis,
		[]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(redisPort), "--save", "", "--appendonly", "no", "--dir", o.workDir},
		nil, redisReady(redisAddr)); err != nil {
		return nil, err
	}

	gwEnv := []string{"RELAYBENCH_CLIENT_KEY=" + clientKey, "RELAYBENCH_UPSTREAM_KEY=" + upstreamKey}
	for _, g := range []struct{ name, redisURL string }{
		{subjectGateway, ""},
		{subjectGatewayCache, "redis://" + redisAddr + "/0"},
	} {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := loopback(port)
		confPath := filepath.Join(o.workDir, g.name+".yaml")
		if err := writeGatewayConfig(confPath, addr, simAddr, g.redisURL); err != nil {
			return nil, err
		}
		c, err := st.start(ctx, g.name, o.workDir, filepath.Join(o.binDir, "gateway"), []string{"-config", confPath}, gwEnv,
			httpReady("http://"+addr+"/ready"))
		if err != nil {
			return nil, err
		}
		st.gateways[g.name] = c
		base := "http://" + addr
		st.add(&subject{name: g.name, bases: map[role]string{roleFast: base}, auth: "Bearer " + clientKey,
			gateway: true, proxy: true, metricsURL: base + "/metrics", pids: func(role) []int { return []int{c.pid()} }})
	}

	// The floor proxy: this executable again, in its floor-proxy role.
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("floor proxy: find own executable: %w", err)
	}
	var fpArgs []string
	fpBases := map[role]string{}
	var fpReady []string
	for _, r := range []role{roleFast, roleStream, roleIdle} {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := loopback(port)
		fpArgs = append(fpArgs, "-route", addr+"="+simBases[r])
		fpBases[r] = "http://" + addr
		fpReady = append(fpReady, addr)
	}
	fp, err := st.start(ctx, subjectGoProxy, o.workDir, self, fpArgs, []string{roleEnv + "=" + roleFloorProxy}, allReady(fpReady))
	if err != nil {
		return nil, err
	}
	st.add(&subject{name: subjectGoProxy, bases: fpBases, auth: "Bearer " + upstreamKey, proxy: true,
		pids: func(role) []int { return []int{fp.pid()} }})

	if o.nginx != "" {
		var routes []nginxRoute
		ngBases := map[role]string{}
		for _, r := range []role{roleFast, roleStream, roleIdle} {
			port, err := freePort()
			if err != nil {
				return nil, err
			}
			routes = append(routes, nginxRoute{Name: "sim_" + string(r), Listen: loopback(port), Upstream: simAddr[r],
				Stream: r != roleFast})
			ngBases[r] = "http://" + loopback(port)
		}
		ng, err := startNginx(ctx, o.nginx, o.workDir, routes, o.nofile)
		if err != nil {
			return nil, err
		}
		st.children = append(st.children, ng)
		st.add(&subject{name: subjectNginx, bases: ngBases, auth: "Bearer " + upstreamKey, proxy: true,
			pids: func(role) []int {
				workers, _ := childPIDs(ng.pid())
				return append([]int{ng.pid()}, workers...)
			}})
	}
	return st, nil
}

func (st *stack) start(ctx context.Context, name, dir, bin string, args, env []string, ready func(context.Context) error) (*child, error) {
	c, err := startChild(name, dir, bin, args, env)
	if err != nil {
		return nil, err
	}
	st.children = append(st.children, c)
	if err := c.waitReady(ctx, ready); err != nil {
		return nil, err
	}
	return c, nil
}

func (st *stack) add(s *subject) {
	s.client = newClient()
	st.subjects[s.name] = s
	st.order = append(st.order, s.name)
}

// alive reports the first child that has died.
func (st *stack) alive() error {
	for _, c := range st.children {
		if err := c.alive(); err != nil {
			return err
		}
	}
	return nil
}

// close stops the children in reverse start order (proxies before the
// simulators they talk to) and drops the clients' connections.
func (st *stack) close() {
	for _, s := range st.subjects {
		s.client.CloseIdleConnections()
	}
	for i := len(st.children) - 1; i >= 0; i-- {
		st.children[i].stop()
	}
}

// newClient is the load generator's HTTP/1.1 client for one subject, with
// room for every connection a run may keep.
func newClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 20000,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}}
}

// secret makes a fresh random key for one run. Keys reach the children only
// through the environment; they are never written to a file or printed.
func secret(prefix string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return prefix + hex.EncodeToString(b)
}

func allReady(addrs []string) func(context.Context) error {
	return func(ctx context.Context) error {
		for _, a := range addrs {
			if err := tcpReady(a)(ctx); err != nil {
				return err
			}
		}
		return nil
	}
}

// redisReady succeeds when redis answers PING.
func redisReady(addr string) func(context.Context) error {
	return talkReady(addr, func(conn net.Conn) error {
		if _, err := conn.Write([]byte("PING\r\n")); err != nil {
			return err
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(line, "+PONG") {
			return fmt.Errorf("redis PING answered %q", strings.TrimSpace(line))
		}
		return nil
	})
}

// gatewayConfig is the gateway's config for the suite: every feature
// production turns on (client keys, upstream keys, routing with fallback,
// prices for usage and savings, metrics, request logs; the cache in one of
// the two gateways). Two settings differ from production, so that each
// fallback request pays for a failed attempt instead of having the circuit
// breaker skip the failing upstream: one attempt per upstream and a breaker
// that never opens. Neither setting changes a request that does not fail.
var gatewayConfig = template.Must(template.New("gateway.yaml").Parse(`# Written by relaybench for one run.
listen: "{{.Listen}}"
client_keys: ["${RELAYBENCH_CLIENT_KEY}"]
stream_idle_timeout: 2h
upstreams:
{{- range .Upstreams}}
  - name: {{.Name}}
    base_url: {{.URL}}
    api_key: ${RELAYBENCH_UPSTREAM_KEY}
    timeout: {{.Timeout}}
    connect_timeout: 5s
    # The simulator speaks every stream API the suite measures; without
    # apis: the gateway takes a host it does not know for chat,
    # embeddings and completions only.
    apis: [chat, messages, responses]
{{- end}}
models:
  - {name: bench-fast, route: [sim-fast], price: {input_per_mtok: 1.40, output_per_mtok: 5.60}, reference_price: {input_per_mtok: 2.00, output_per_mtok: 8.00}}
  - {name: bench-stream, route: [sim-stream], price: {input_per_mtok: 1.40, output_per_mtok: 5.60}, reference_price: {input_per_mtok: 2.00, output_per_mtok: 8.00}}
  - {name: bench-idle, route: [sim-idle], price: {input_per_mtok: 1.40, output_per_mtok: 5.60}, reference_price: {input_per_mtok: 2.00, output_per_mtok: 8.00}}
  - {name: bench-fallback, route: [sim-fail, sim-fast], price: {input_per_mtok: 1.40, output_per_mtok: 5.60}, reference_price: {input_per_mtok: 2.00, output_per_mtok: 8.00}}
retry: {attempts: 1}
circuit_breaker: {failures: 1000000000}
{{- if .RedisURL}}
# A Redis call that misses the default 50ms bound is dropped, and the
# cache backs off after it: on a loaded machine the primed answers would
# then never be stored. The bound is for production's tail, not this run's.
cache: {redis_url: "{{.RedisURL}}", ttl: 1h, timeout: 1s}
{{- end}}
log: {level: info, requests: true}
`))

func writeGatewayConfig(path, listen string, sims map[role]string, redisURL string) error {
	type upstream struct{ Name, URL, Timeout string }
	var ups []upstream
	for _, r := range []role{roleFast, roleStream, roleIdle, roleFail} {
		timeout := "60s"
		if r == roleIdle {
			timeout = "2h" // idle streams stay open until the suite closes them
		}
		ups = append(ups, upstream{Name: "sim-" + string(r), URL: "http://" + sims[r] + "/v1", Timeout: timeout})
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("gateway config: %w", err)
	}
	err = gatewayConfig.Execute(f, struct {
		Listen, RedisURL string
		Upstreams        []upstream
	}{listen, redisURL, ups})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("gateway config %s: %w", path, err)
	}
	return nil
}

// lookBinary finds a program the suite needs, naming what installs it.
func lookBinary(name, hint string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s is not installed (%s)", name, hint)
	}
	return p, nil
}

// checkBinaries makes sure the gateway and simulator were built.
func checkBinaries(dir string) error {
	var missing []string
	for _, b := range []string{"gateway", "upstream-sim"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			missing = append(missing, filepath.Join(dir, b))
		}
	}
	if len(missing) > 0 {
		return errors.New("missing " + strings.Join(missing, ", ") + ": run `make build` first")
	}
	return nil
}
