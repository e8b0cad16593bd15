// Package unixpair makes connected unix stream socket pairs: how nbdlab
// serves a backend to the kernel from its own process, relays TLS for the
// kernel, and pairs a client with a server in tests.
package unixpair

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// New returns the two ends of a socket pair: one as a file, to hand to
// the kernel or another process, the other as a net.Conn for this one.
// Both are close-on-exec.
func New(name string) (*os.File, net.Conn, error) {
	fds, err := socketpair()
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair for %s: %w", name, err)
	}
	local := os.NewFile(uintptr(fds[1]), name)
	c, err := net.FileConn(local)
	local.Close() // FileConn holds a duplicate
	if err != nil {
		unix.Close(fds[0])
		return nil, nil, fmt.Errorf("socketpair for %s: %w", name, err)
	}
	return os.NewFile(uintptr(fds[0]), name), c, nil
}

// Conns returns both ends of a socket pair as net.Conns.
func Conns(name string) (net.Conn, net.Conn, error) {
	f, b, err := New(name)
	if err != nil {
		return nil, nil, err
	}
	a, err := net.FileConn(f)
	f.Close()
	if err != nil {
		b.Close()
		return nil, nil, fmt.Errorf("socketpair for %s: %w", name, err)
	}
	return a, b, nil
}
