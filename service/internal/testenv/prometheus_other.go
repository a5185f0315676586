//go:build !linux

package testenv

import "syscall"

// prometheusProcAttr has no parent-death signal to ask for outside Linux;
// t.Cleanup still stops the server when the test ends normally.
func prometheusProcAttr() *syscall.SysProcAttr {
	return nil
}
