package testenv

import (
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// child is one run of a server binary a fixture started (redis-server,
// prometheus); a restart makes a new one.
type child struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd.Wait has returned
	out    *SyncBuffer   // stdout and stderr, read when the child misbehaves
}

// startChild starts cmd with its output collected and attr as its process
// attributes. The goroutine that reaps it ends when the process exits, which
// kill and stop guarantee.
func startChild(cmd *exec.Cmd, attr *syscall.SysProcAttr) (*child, error) {
	out := &SyncBuffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	c := &child{cmd: cmd, exited: make(chan struct{}), out: out}
	go func() {
		_ = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// kill sends SIGKILL, as if the server died under load, and waits for the
// process to exit.
func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// stop asks the child to shut down cleanly, kills it if it has not exited
// within grace, and waits for it to exit.
func (c *child) stop(grace time.Duration) {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(grace):
		c.kill()
	}
}
