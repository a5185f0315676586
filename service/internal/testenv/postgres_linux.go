package testenv

import "syscall"

// postgresProcAttr runs initdb and postgres as cred (nil: as ourselves),
// and has the kernel send postgres SIGQUIT, its immediate shutdown, when
// the test binary dies without running its cleanups, so no orphaned
// cluster keeps a port on a shared machine.
func postgresProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGQUIT, Credential: cred}
}
