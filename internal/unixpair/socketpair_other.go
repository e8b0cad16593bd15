//go:build !linux

package unixpair

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// socketpair makes the pair close-on-exec under the fork lock, where the
// kernel cannot do it in the same call.
func socketpair() ([2]int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.CloseOnExec(fds[0])
		unix.CloseOnExec(fds[1])
	}
	return fds, err
}
