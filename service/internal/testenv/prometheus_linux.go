package testenv

import "syscall"

// prometheusProcAttr makes the kernel kill prometheus when the test binary
// dies without running its cleanups (a `go test -timeout` panic, a SIGKILL),
// so no orphaned server keeps a port and a TSDB lock on a shared machine.
func prometheusProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
