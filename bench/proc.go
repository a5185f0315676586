package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// startTimeout bounds how long a child may take to answer on its port. It
// is a failure guard for a loaded machine, not an expectation: every child
// is up in milliseconds when the machine is idle.
const startTimeout = 30 * time.Second

// stopGrace is how long a child gets to exit after SIGTERM before SIGKILL.
const stopGrace = 10 * time.Second

// child is a process the suite started and must stop: a simulator, a
// gateway, redis-server, nginx or the floor proxy. Its stdout and stderr go
// to a log file in the suite's work directory.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed once Wait has returned
	waitErr error
}

// startChild starts bin with args and env added to the suite's own
// environment. The child gets its own process group, so a Ctrl-C at the
// terminal reaches only the suite, which then stops its children in order,
// and (on Linux) dies with the suite if the suite is killed.
func startChild(name, dir, bin string, args, env []string) (*child, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer logf.Close() // the child holds its own copy of the descriptor
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir
	cmd.SysProcAttr = childProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// pid is the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// waitReady polls ready until it succeeds, the child exits, ctx ends or
// startTimeout passes. Polling is the only signal a foreign binary
// (redis-server, nginx) offers that it is serving.
func (c *child) waitReady(ctx context.Context, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	delay := 5 * time.Millisecond
	var last error
	for {
		if last = ready(ctx); last == nil {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-c.exited:
			t.Stop()
			return fmt.Errorf("%s exited before it was ready (%v); its log ends:\n%s", c.name, c.waitErr, c.logTail())
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s not ready: %v (last probe: %v); its log ends:\n%s", c.name, ctx.Err(), last, c.logTail())
		case <-t.C:
		}
		delay = min(delay*2, 200*time.Millisecond)
	}
}

// stop sends SIGTERM and, after stopGrace, SIGKILL. It returns once the
// process is gone.
func (c *child) stop() {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-c.exited:
	case <-t.C:
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// alive reports an error when the child has exited.
func (c *child) alive() error {
	select {
	case <-c.exited:
		return fmt.Errorf("%s exited during the run (%v); its log ends:\n%s", c.name, c.waitErr, c.logTail())
	default:
		return nil
	}
}

// logTail returns the last lines of the child's log, for error messages.
func (c *child) logTail() string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const keep = 2000
	if len(b) > keep {
		b = b[len(b)-keep:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return strings.TrimRight(string(b), "\n")
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago. A
// child then binds it; the tiny window in which another process could take
// it shows up as a clear start error rather than a wrong measurement.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free loopback port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// httpReady returns a probe that succeeds when GET url answers 200.
func httpReady(url string) func(context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

// tcpReady returns a probe that succeeds when addr accepts a connection
// (nginx has no endpoint of its own to ask).
func tcpReady(addr string) func(context.Context) error {
	return talkReady(addr, func(net.Conn) error { return nil })
}

// talkReady returns a probe that succeeds when addr accepts a connection
// and talk, given it with the probe's deadline set, succeeds.
func talkReady(addr string, talk func(net.Conn) error) func(context.Context) error {
	return func(ctx context.Context) error {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
		}
		return talk(conn)
	}
}

// rssBytes reads a process's resident set (VmRSS) from /proc.
func rssBytes(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("read RSS of pid %d: %w", pid, err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("pid %d: unexpected VmRSS line %q", pid, line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("pid %d: VmRSS %q: %w", pid, f[0], err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("pid %d: no VmRSS in /proc status", pid)
}

// openFiles counts a process's open descriptors.
func openFiles(pid int) (int, error) {
	fds, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return 0, fmt.Errorf("count open files of pid %d: %w", pid, err)
	}
	return len(fds), nil
}

// childPIDs lists the direct children of pid (nginx's workers).
func childPIDs(pid int) ([]int, error) {
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return nil, fmt.Errorf("list threads of pid %d: %w", pid, err)
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + t.Name() + "/children")
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("children of pid %d: %w", pid, err)
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out, nil
}
