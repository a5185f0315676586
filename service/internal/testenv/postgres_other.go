//go:build !linux

package testenv

import "syscall"

// postgresProcAttr runs initdb and postgres as cred (nil: as ourselves);
// outside Linux there is no parent-death signal to ask for.
func postgresProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	if cred == nil {
		return nil
	}
	return &syscall.SysProcAttr{Credential: cred}
}
