package bench

import "syscall"

// childProcAttr puts a child in its own process group and has the kernel
// kill it when the suite dies without stopping it (SIGKILL, a test
// timeout), so no simulator or gateway is left holding a port on a shared
// machine.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
