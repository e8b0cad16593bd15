package nbd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// fdConn is a socket taken out of the Go runtime's network poller: its
// reads and writes are blocking system calls on the calling thread.
//
// A session reads requests one after another, so the poller buys it
// nothing, and it costs: the poller registers every socket for writability
// too, and each time the client drains a batch of replies the kernel wakes
// the thread parked in epoll for an event nobody waits for. On a busy
// small-request stream those wake-ups cost more than the requests.
//
// Close shuts the socket down at once, which wakes a blocked read or
// write, but closes the descriptor only when the last call using it has
// returned, so that a late write can never reach a reused descriptor.
type fdConn struct {
	mu     sync.Mutex
	fd     int
	users  int  // calls in progress on fd
	closed bool // fd is shut down; closed when users drops to 0

	local, remote net.Addr
	nearby        bool // the peer is on this machine: ReadSpin may poll
}

// unixSendBuffer is the send buffer asked for unix-domain connections. A
// unix stream socket has no receive buffer: the sender's buffer is the
// whole queue to the client, 208 KiB by default, a fifth of a 1 MiB read.
// Each large reply then stopped the writer several times, each stop a
// sleep and a wake-up on both sides. TCP connections keep the kernel's
// autotuning, which setting SO_SNDBUF would turn off.
const unixSendBuffer = 4 << 20

// detach moves a TCP or unix-domain connection out of the poller and
// closes c; the socket lives on in the returned connection. Other
// connections (TLS, pipes) are returned unchanged.
func detach(c net.Conn) (net.Conn, error) {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return c, nil
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("nbd: take socket from the poller: %w", err)
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("nbd: take socket from the poller: %w", err)
	}
	if derr != nil {
		return nil, fmt.Errorf("nbd: take socket from the poller: dup: %w", derr)
	}
	if _, ok := c.(*net.UnixConn); ok {
		// Best effort: the kernel caps it at net.core.wmem_max.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, unixSendBuffer)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nbd: take socket from the poller: %w", err)
	}
	fc := &fdConn{fd: fd, local: c.LocalAddr(), remote: c.RemoteAddr(), nearby: onThisMachine(c)}
	c.Close() // removes the original descriptor from the poller
	return fc, nil
}

func (c *fdConn) acquire() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return -1, net.ErrClosed
	}
	c.users++
	return c.fd, nil
}

func (c *fdConn) release() {
	c.mu.Lock()
	c.users--
	if c.closed && c.users == 0 {
		unix.Close(c.fd)
	}
	c.mu.Unlock()
}

func (c *fdConn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: c.remote.Network(), Source: c.local, Addr: c.remote, Err: os.NewSyscallError(op, err)}
}

// Read reads what the socket has, blocking until it has something.
func (c *fdConn) Read(p []byte) (int, error) {
	fd, err := c.acquire()
	if err != nil {
		return 0, err
	}
	defer c.release()
	for {
		n, err := unix.Read(fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, c.opErr("read", err)
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// onThisMachine reports whether c's peer is local: a unix socket, or TCP
// from a loopback address.
func onThisMachine(c net.Conn) bool {
	if _, ok := c.(*net.UnixConn); ok {
		return true
	}
	a, ok := c.RemoteAddr().(*net.TCPAddr)
	return ok && a.IP.IsLoopback()
}

// ReadSpin is Read, but while the socket is empty it polls it for up to d
// before it blocks, if the peer is on this machine. A local sender fills
// the socket at memory speed, so the wait is short; a remote one is paced
// by the network, and polling for it would only burn the CPU.
func (c *fdConn) ReadSpin(p []byte, d time.Duration) (int, error) {
	if d <= 0 || !c.nearby {
		return c.Read(p)
	}
	fd, err := c.acquire()
	if err != nil {
		return 0, err
	}
	var start time.Time
	for i := 0; ; i++ {
		n, _, err := unix.Recvfrom(fd, p, unix.MSG_DONTWAIT)
		switch {
		case err == nil && n == 0 && len(p) > 0:
			c.release()
			return 0, io.EOF
		case err == nil:
			c.release()
			return n, nil
		case err != unix.EAGAIN && err != unix.EINTR:
			c.release()
			return 0, c.opErr("read", err)
		}
		if i == 0 {
			start = time.Now()
		} else if i%4 == 0 && time.Since(start) > d {
			break
		}
	}
	c.release()
	return c.Read(p)
}

// Write writes all of p.
func (c *fdConn) Write(p []byte) (int, error) {
	fd, err := c.acquire()
	if err != nil {
		return 0, err
	}
	defer c.release()
	total := 0
	for total < len(p) {
		n, err := unix.Write(fd, p[total:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return total, c.opErr("write", err)
		}
		total += n
	}
	return total, nil
}

// Writev writes all of bufs with as few system calls as it can.
func (c *fdConn) Writev(bufs [][]byte) (int64, error) {
	fd, err := c.acquire()
	if err != nil {
		return 0, err
	}
	defer c.release()
	var total int64
	for len(bufs) > 0 {
		n, err := unix.Writev(fd, bufs)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return total, c.opErr("writev", err)
		}
		total += int64(n)
		for len(bufs) > 0 && n >= len(bufs[0]) {
			n -= len(bufs[0])
			bufs = bufs[1:]
		}
		if len(bufs) > 0 {
			bufs[0] = bufs[0][n:]
		}
	}
	return total, nil
}

// CloseRead shuts down the reading side: a blocked Read returns io.EOF.
func (c *fdConn) CloseRead() error {
	fd, err := c.acquire()
	if err != nil {
		return err
	}
	defer c.release()
	if err := unix.Shutdown(fd, unix.SHUT_RD); err != nil && !errors.Is(err, unix.ENOTCONN) {
		return c.opErr("shutdown", err)
	}
	return nil
}

// Close shuts the socket down, waking any blocked call, and releases the
// descriptor once no call uses it.
func (c *fdConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return net.ErrClosed
	}
	c.closed = true
	unix.Shutdown(c.fd, unix.SHUT_RDWR)
	if c.users == 0 {
		return unix.Close(c.fd)
	}
	return nil
}

func (c *fdConn) LocalAddr() net.Addr  { return c.local }
func (c *fdConn) RemoteAddr() net.Addr { return c.remote }

// Deadlines need the poller; a detached connection is stopped with
// CloseRead or Close instead.
func (c *fdConn) SetDeadline(time.Time) error      { return errors.ErrUnsupported }
func (c *fdConn) SetReadDeadline(time.Time) error  { return errors.ErrUnsupported }
func (c *fdConn) SetWriteDeadline(time.Time) error { return errors.ErrUnsupported }
