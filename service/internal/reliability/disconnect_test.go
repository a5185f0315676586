package reliability

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// establishedOn counts the ESTABLISHED TCP sockets on this machine with an
// end on the given loopback port, from /proc/net/tcp and tcp6. Both ends of
// a connection inside this process count. ok is false where /proc cannot be
// read (not Linux), so the caller skips that check rather than passing it.
func establishedOn(t testing.TB, port int) (n int, ok bool) {
	t.Helper()
	hexPort := fmt.Sprintf(":%04X", port)
	for _, f := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		data, err := os.ReadFile(f)
		if err != nil {
			return 0, false
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fields := strings.Fields(line)
			// sl local_address rem_address st …; st 01 is ESTABLISHED.
			if len(fields) < 4 || fields[3] != "01" {
				continue
			}
			if strings.HasSuffix(fields[1], hexPort) || strings.HasSuffix(fields[2], hexPort) {
				n++
			}
		}
	}
	return n, true
}

// settledGoroutines waits for the goroutine count to fall to at most limit,
// as goroutines of closed connections wind down, and returns the last count.
func settledGoroutines(limit int) int {
	deadline := time.Now().Add(guard)
	for {
		n := runtime.NumGoroutine()
		if n <= limit || time.Now().After(deadline) {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestClientDisconnects: clients that go away, mid-stream or while the
// upstream is still thinking, cancel the upstream request, and leave no
// goroutine or connection behind.
func TestClientDisconnects(t *testing.T) {
	const clients = 100
	// goroutineSlack allows for runtime and pool goroutines that come and go
	// on their own; a leak per request would be at least clients.
	const goroutineSlack = 10
	cases := []struct {
		name   string
		sim    upstreamsim.Config
		stream bool
		// midStream: the client reads the first event before leaving;
		// otherwise it leaves while the upstream holds its request.
		midStream bool
	}{
		{"mid-stream", upstreamsim.Config{ChunkDelay: 5 * time.Millisecond, CompletionTokens: 1 << 30}, true, true},
		{"stream before its first byte", upstreamsim.Config{Latency: time.Hour}, true, false},
		{"waiting for a whole answer", upstreamsim.Config{Latency: time.Hour}, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sim := startSim(t, upstreamsim.Config{})
			gw := startGateway(t, gatewaySpec{
				upstreams: []upstreamSpec{{name: "sim", url: sim.base, timeout: "1h"}},
				route:     []string{"sim"},
				// Neither the gateway's timeouts nor its idle timer may
				// be what ends these requests: only the clients leaving.
				streamIdle: "1h",
			}.yaml(), nil)
			c := newClient(t, clients)

			// Warm up, so pools and lazily started goroutines are in the
			// baseline, then let go of the client's connections.
			if err := wholeChat(do(c, chat(context.Background(), gw.URL, clientKey, "m", false, "warm up"))); err != nil {
				t.Fatal(err)
			}
			c.Transport.(*http.Transport).CloseIdleConnections()
			waitUntil(t, "the warm-up connection closes", func() bool { open, _ := gw.conns.open(); return open == 0 })
			baseline := runtime.NumGoroutine()
			simBaseline, _ := sim.conns.open()

			sim.SetConfig(tc.sim)
			var wg sync.WaitGroup
			cancels := make([]context.CancelFunc, clients)
			errs := make(chan error, clients)
			for i := range clients {
				ctx, cancel := context.WithCancel(context.Background())
				cancels[i] = cancel
				wg.Go(func() {
					resp, err := c.Do(chat(ctx, gw.URL, clientKey, "m", tc.stream, fmt.Sprintf("leaving %d", i)))
					if err != nil {
						if ctx.Err() == nil {
							errs <- err
						}
						return
					}
					defer resp.Body.Close()
					if tc.midStream {
						line, err := bufio.NewReader(resp.Body).ReadString('\n')
						if err != nil || !strings.HasPrefix(line, "data: ") {
							errs <- fmt.Errorf("first line %q: %v", line, err)
						}
						cancel()
						return
					}
					errs <- fmt.Errorf("an answer came (%d) while the upstream should hold it", resp.StatusCode)
				})
			}
			if !tc.midStream {
				waitUntil(t, "the upstream holds every request", func() bool { return sim.Stats().InFlight == clients })
				for _, cancel := range cancels {
					cancel()
				}
			}
			wg.Wait()
			for _, cancel := range cancels {
				cancel()
			}
			close(errs)
			for err := range errs {
				t.Error(err)
			}

			waitUntil(t, "the upstream sees every request cancelled", func() bool { return sim.Stats().Cancelled == clients })
			waitUntil(t, "no upstream request in flight", func() bool { return sim.Stats().InFlight == 0 })
			reg := gw.app.Metrics.Registry
			waitUntil(t, "no gateway request in flight", func() bool {
				return testenv.MetricValue(t, reg, "relaygate_inflight_requests", nil) == 0
			})
			if got := testenv.MetricValue(t, reg, "relaygate_requests_total", map[string]string{"code": "499"}); got != clients {
				t.Errorf("relaygate_requests_total{code=499} = %v, want %d", got, clients)
			}

			// Connections: none left from the clients, and none to the
			// upstream beyond the warm-up's keep-alive one.
			c.Transport.(*http.Transport).CloseIdleConnections()
			waitUntil(t, "the gateway's client connections close", func() bool { open, _ := gw.conns.open(); return open == 0 })
			waitUntil(t, "the upstream connections of cancelled requests close", func() bool {
				open, active := sim.conns.open()
				return active == 0 && open <= simBaseline
			})
			if n, ok := establishedOn(t, port(t, gw.URL)); ok && n != 0 {
				t.Errorf("%d sockets still ESTABLISHED on the gateway's port", n)
			}
			if n, ok := establishedOn(t, port(t, sim.srv.URL)); ok && n > 2*simBaseline {
				t.Errorf("%d sockets ESTABLISHED on the upstream's port, want at most %d (the keep-alive pool)", n, 2*simBaseline)
			}
			if n := settledGoroutines(baseline + goroutineSlack); n > baseline+goroutineSlack {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutines: %d before, %d after %d clients left; stacks:\n%s",
					baseline, n, clients, buf[:runtime.Stack(buf, true)])
			}
			st := sim.Stats()
			t.Logf("%d clients left; upstream cancelled %d, in flight %d; goroutines %d → %d; connections to the upstream %d",
				clients, st.Cancelled, st.InFlight, baseline, runtime.NumGoroutine(), simBaseline)
		})
	}
}
