//go:build !linux

package testenv

import "syscall"

// redisProcAttr has no parent-death signal to ask for outside Linux; t.Cleanup
// still stops the server when the test ends normally.
func redisProcAttr() *syscall.SysProcAttr {
	return nil
}
