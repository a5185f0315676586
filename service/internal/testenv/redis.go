// Package testenv starts real servers (Redis, Prometheus) as child processes
// for tests, on free loopback ports, and stops them when the test ends.
//
// Tests talk to the same server binaries production uses instead of fakes, so
// a fixture that cannot start its server fails the test rather than skipping
// it: a skipped test looks green on CI while proving nothing. `make test`
// installs the binaries (scripts/install-tools.sh).
//
// Only *_test.go files may import this package.
package testenv

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// redisStartTimeout bounds how long StartRedis and Restart wait for PING to
// answer. It is a failure guard, not an expectation: redis-server normally
// answers in milliseconds, but a loaded CI machine can be slow.
const redisStartTimeout = 30 * time.Second

// redisOutputTail is how much of redis-server's output an error quotes:
// enough to show why it died.
const redisOutputTail = 4 << 10

// Redis is a redis-server child process owned by one test.
type Redis struct {
	// Addr is host:port on 127.0.0.1.
	Addr string
	// URL is redis://Addr/0, the form the gateway's config takes.
	URL string

	t    testing.TB
	port int
	dir  string

	mu   sync.Mutex
	proc *child // nil while stopped; Restart makes a new one
}

// StartRedis starts redis-server on a free 127.0.0.1 port with persistence off,
// waits until it answers PING and stops it in t.Cleanup. If redis-server is
// not installed the test fails, saying that `make test` installs it.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin := redisBinary(t)
	dir := t.TempDir()

	var r *Redis
	onFreePort(t, "redis-server", func(_, port int) error {
		proc, err := startRedisProcess(bin, port, dir)
		if err != nil {
			return err
		}
		r = &Redis{
			Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			t:    t,
			port: port,
			dir:  dir,
			proc: proc,
		}
		r.URL = "redis://" + r.Addr + "/0"
		return nil
	})
	t.Cleanup(r.Stop)
	return r
}

// Stop kills redis-server with SIGKILL, as if it died under load, and waits
// for the process to exit. Clients see refused connections afterwards.
// Stopping a stopped server does nothing.
func (r *Redis) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return
	}
	r.proc.kill()
	r.proc = nil
}

// Restart starts redis-server again on the same port and waits for PING. The
// data set starts empty, like a replaced cache node, since persistence is off.
// It stops a running server first.
func (r *Redis) Restart() {
	r.t.Helper()
	r.Stop()
	bin := redisBinary(r.t)

	r.mu.Lock()
	defer r.mu.Unlock()
	// The old socket may linger briefly in the kernel after the kill; retry the
	// bind rather than guess how long that takes.
	err := retryFor(redisStartTimeout, 50*time.Millisecond, func() error {
		proc, err := startRedisProcess(bin, r.port, r.dir)
		if err == nil {
			r.proc = proc
		}
		return err
	})
	if err != nil {
		r.t.Fatalf("testenv: restart redis-server on %s: %v", r.Addr, err)
	}
}

func redisBinary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testenv: redis-server is not installed (%v); `make test` installs it "+
			"(scripts/install-tools.sh), or run `apt-get install redis-server`", err)
	}
	return bin
}

func startRedisProcess(bin string, port int, dir string) (*child, error) {
	cmd := exec.Command(bin,
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", dir,
		"--daemonize", "no",
		"--logfile", "",
		"--loglevel", "warning",
	)
	p, err := startChild(cmd, redisProcAttr())
	if err != nil {
		return nil, err
	}

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(redisStartTimeout)
	for {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("redis-server on port %d exited: %s", port, p.out.Tail(redisOutputTail))
		default:
		}
		err := pingRedis(addr)
		if err == nil {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, fmt.Errorf("redis-server on %s did not answer PING within %s: %w; output: %s",
				addr, redisStartTimeout, err, p.out.Tail(redisOutputTail))
		}
		// Polling is the only way to learn that redis-server is ready: it
		// writes no readiness signal we could wait on at loglevel warning.
		time.Sleep(10 * time.Millisecond)
	}
}

// pingRedis speaks just enough RESP to tell that the server is serving, so
// the fixture does not depend on the client library under test.
func pingRedis(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		// "-LOADING" and the like: up but not serving yet.
		return errors.New("PING answered " + strings.TrimSpace(line))
	}
	return nil
}
