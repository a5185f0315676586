package testenv

import "syscall"

// redisProcAttr makes the kernel kill redis-server when the test binary dies
// without running its cleanups (a `go test -timeout` panic, a SIGKILL), so no
// orphaned server keeps holding a port on a shared machine.
func redisProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
