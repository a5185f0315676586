package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// buildGateway builds the command into a temporary directory, so a test
// can run the gateway as its own process and measure that process alone.
func buildGateway(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool, to build the gateway: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "gateway")
	out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startGatewayProcess runs bin with the config at cfgPath and returns its
// process and listening address (from its "gateway listening" log line).
func startGatewayProcess(t *testing.T, bin, cfgPath string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(bin, "-config", cfgPath)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the gateway: %v", err)
	}
	exited := make(chan struct{})
	addrs := make(chan string, 1)
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "gateway listening" {
				addrs <- line.Addr
			}
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(relGuard):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	select {
	case a := <-addrs:
		return cmd, a
	case <-exited:
		t.Fatal("the gateway exited before listening")
	case <-time.After(relGuard):
		t.Fatal("the gateway did not start listening")
	}
	return nil, ""
}

// TestStalledConnectionsDoNotStarveTheGateway: 20,000 connections that
// announce a request body without a key and never send it (each held open
// by the client to the end) cost the gateway seconds each, not a
// descriptor for ever: /health and real requests are answered within a
// second once they are all open, and the gateway's descriptors fall back
// while the client still holds its ends. Before, the gateway reached its
// open-file limit and stopped answering anyone.
//
// The gateway runs as its own process, with the machine's open-file limit
// (20,000 here), under its default connection settings. The test process
// raises its own limit above the stalled count (RLIMIT_NOFILE; needs
// root or a hard limit high enough) once the gateway has started.
func TestStalledConnectionsDoNotStarveTheGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 20,000 connections")
	}
	if runtime.GOOS != "linux" {
		t.Skip("measures the gateway through /proc")
	}
	stalled := 20_000
	bin := buildGateway(t)
	up := startRelUpstream(t)
	close(up.release)
	cfgPath := filepath.Join(t.TempDir(), "gateway.yaml")
	writeFile(t, cfgPath, fmt.Sprintf("listen: \"127.0.0.1:0\"\nclient_keys: [%q]\nlog: {level: info, requests: false}\ngpu: {interval: 1h}\n"+
		"upstreams:\n  - {name: one, base_url: %q}\nmodels:\n  - {name: m, route: [one]}\n", relKey, up.URL))
	cmd, addr := startGatewayProcess(t, bin, cfgPath)
	pid := cmd.Process.Pid
	limits, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	for _, l := range strings.Split(string(limits), "\n") {
		if strings.HasPrefix(l, "Max open files") {
			t.Logf("gateway: %s", strings.Join(strings.Fields(l), " "))
		}
	}

	fds0, rss0, _, err := procStats(pid)
	if err != nil {
		t.Fatal(err)
	}

	// Sample the gateway's descriptors and memory while the stalled
	// connections arrive.
	var peakFDs atomic.Int64
	var peakRSS atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if fds, rss, _, err := procStats(pid); err == nil {
				if int64(fds) > peakFDs.Load() {
					peakFDs.Store(int64(fds))
				}
				if rss > peakRSS.Load() {
					peakRSS.Store(rss)
				}
			}
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()

	// Every probe on a fresh connection, as a load balancer's health check
	// and a new client would come.
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	probe := func(real bool) (time.Duration, error) {
		var req *http.Request
		if real {
			req, _ = http.NewRequest("POST", "http://"+addr+"/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
			req.Header.Set("Authorization", "Bearer "+relKey)
		} else {
			req, _ = http.NewRequest("GET", "http://"+addr+"/health", nil)
		}
		t0 := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			return time.Since(t0), err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(t0)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		return took, err
	}
	// /health as a load balancer sees it while the flood arrives:
	// reported, not judged (the kernel's accept queue overflows then).
	var during []time.Duration
	var duringErrs int
	probed := make(chan struct{})
	go func() {
		defer close(probed)
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(250 * time.Millisecond):
			}
			took, err := probe(false)
			if err != nil {
				duringErrs++
			}
			during = append(during, took)
		}
	}()

	// One process may hold fewer descriptors than the stalled count, so
	// helper processes (this test binary, see TestStallHelper) hold them.
	start := time.Now()
	const helpers = 4
	var opened, failed int
	var firstErr string
	var waits []func() (int, int, string)
	for h := range helpers {
		n := stalled / helpers
		if h == helpers-1 {
			n = stalled - n*(helpers-1)
		}
		waits = append(waits, startStallHelper(t, addr, n))
	}
	for _, wait := range waits {
		o, f, e := wait()
		opened, failed = opened+o, failed+f
		if firstErr == "" {
			firstErr = e
		}
	}
	took := time.Since(start)
	close(stopSampling)
	<-sampled
	<-probed
	t.Logf("/health while the flood arrived: %d probes, %d failed, %s", len(during), duringErrs, spread(during))
	fdsOpen, _, _, err := procStats(pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d stalled connections opened in %s, %d failed (%s); gateway fds %d before, %d peak, %d now; RSS %d KiB before, %d KiB peak",
		opened, took.Round(time.Millisecond), failed, firstErr, fds0, peakFDs.Load(), fdsOpen, rss0, peakRSS.Load())
	if failed > stalled/10 {
		t.Errorf("%d of %d stalled connections could not even be opened", failed, stalled)
	}

	var health, real []time.Duration
	for range 10 {
		for _, isReal := range []bool{false, true} {
			took, err := probe(isReal)
			what := "/health"
			if isReal {
				what = "a completion"
				real = append(real, took)
			} else {
				health = append(health, took)
			}
			if err != nil {
				t.Errorf("%s under %d stalled connections: %v (after %s)", what, stalled, err, took)
			} else if took > time.Second {
				t.Errorf("%s under %d stalled connections took %s, want under a second", what, stalled, took)
			}
		}
	}
	t.Logf("under the stalled connections: /health %s, a completion %s", spread(health), spread(real))

	// The gateway lets go of them while the client still holds every one.
	var fdsLater int
	waitFor(t, "the gateway closes the stalled connections", func() bool {
		fdsLater, _, _, err = procStats(pid)
		return err == nil && fdsLater < fds0+100
	})
	_, rssEnd, hwm, _ := procStats(pid)
	t.Logf("gateway fds back to %d after %s; RSS %d KiB now, high-water mark %d KiB", fdsLater, time.Since(start).Round(time.Millisecond), rssEnd, hwm)
}

// stallHead announces a body without a key, and is all a stalled client sends.
const stallHead = "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"

// startStallHelper runs TestStallHelper in a child process that opens n
// stalled connections to addr and holds them until the test ends. The
// function it returns waits until they are open, and says how many, how
// many failed, and the first error.
func startStallHelper(t *testing.T, addr string, n int) func() (opened, failed int, firstErr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestStallHelper$")
	cmd.Env = append(os.Environ(), "RELAYGATE_STALL_ADDR="+addr, fmt.Sprintf("RELAYGATE_STALL_N=%d", n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting a stall helper: %v", err)
	}
	// Closing stdin tells the helper to let go and exit.
	t.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	return func() (opened, failed int, firstErr string) {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if _, serr := fmt.Sscanf(line, "opened %d failed %d", &opened, &failed); err != nil || serr != nil {
			t.Fatalf("stall helper: %q: %v %v", line, err, serr)
		}
		if _, e, ok := strings.Cut(strings.TrimSpace(line), " first error: "); ok {
			firstErr = e
		}
		return opened, failed, firstErr
	}
}

// TestStallHelper is not a test: it is the body of startStallHelper's
// child process, and returns at once in a normal run.
func TestStallHelper(t *testing.T) {
	addr, n := os.Getenv("RELAYGATE_STALL_ADDR"), 0
	if _, err := fmt.Sscan(os.Getenv("RELAYGATE_STALL_N"), &n); addr == "" || err != nil {
		return
	}
	conns := make([]net.Conn, n)
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	const dialers = 32
	for d := range dialers {
		wg.Go(func() {
			dl := net.Dialer{Timeout: 10 * time.Second}
			for i := d; i < n; i += dialers {
				c, err := dl.Dial("tcp", addr)
				if err == nil {
					if _, err = io.WriteString(c, stallHead); err != nil {
						c.Close()
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	msg := fmt.Sprintf("opened %d failed %d", n-int(failed.Load()), failed.Load())
	if e, ok := firstErr.Load().(string); ok {
		msg += " first error: " + e
	}
	fmt.Println(msg)
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes it
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// spread is "min / median / max" of durations.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	return fmt.Sprintf("min %s / median %s / max %s", r(s[0]), r(s[len(s)/2]), r(s[len(s)-1]))
}
