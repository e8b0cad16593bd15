package nbd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
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
//
// A call blocks on its thread only while the server has a thread to
// spare, and for parkAfter at most; then it parks (park_linux.go).
type fdConn struct {
	mu     sync.Mutex
	fd     int
	users  int  // calls in progress on fd
	closed bool // fd is shut down; closed when users drops to 0

	w            *waiter
	limits       connLimits
	readDeadline atomic.Int64 // unix nanoseconds; 0 for none

	local, remote net.Addr
	nearby        bool // the peer is on this machine: ReadSpin may poll
}

// connLimits are what a server allows a detached connection.
type connLimits struct {
	maxBlocked   int32         // threads all connections may hold blocked
	writeTimeout time.Duration // how long a write may make no progress; 0 for ever
	recheck      bool          // read deadlines change while reads wait (an idle timeout)
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
func detach(c net.Conn, w *waiter, lim connLimits) (net.Conn, error) {
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
	// A blocking call gives up its thread after parkAfter.
	tv := unix.NsecToTimeval(parkAfter.Nanoseconds())
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("nbd: socket timeouts: %w", err)
		}
	}
	fc := &fdConn{fd: fd, w: w, limits: lim, local: c.LocalAddr(), remote: c.RemoteAddr(), nearby: onThisMachine(c)}
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

// Read reads what the socket has, waiting until it has something, or
// until the read deadline.
func (c *fdConn) Read(p []byte) (int, error) {
	fd, err := c.acquire()
	if err != nil {
		return 0, err
	}
	defer c.release()
	for {
		var n int
		if c.w.enter(c.limits.maxBlocked) {
			n, err = unix.Read(fd, p)
			c.w.leave()
		} else {
			n, _, err = unix.Recvfrom(fd, p, unix.MSG_DONTWAIT)
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			// With an idle timeout, a deadline set while parked is
			// seen within parkAfter.
			wait := c.deadline()
			if c.limits.recheck && (wait.IsZero() || time.Until(wait) > parkAfter) {
				wait = time.Now().Add(parkAfter)
			}
			err := c.w.park(fd, unix.EPOLLIN, wait)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if d := c.deadline(); d.IsZero() || time.Now().Before(d) {
					continue
				}
			}
			if err != nil {
				return 0, c.opErr("read", err)
			}
			continue
		case err != nil:
			return 0, c.opErr("read", err)
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

func (c *fdConn) deadline() time.Time {
	if d := c.readDeadline.Load(); d != 0 {
		return time.Unix(0, d)
	}
	return time.Time{}
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

// Queued returns the bytes waiting in the socket's receive queue.
func (c *fdConn) Queued() (int, error) {
	fd, err := c.acquire()
	if err != nil {
		return 0, err
	}
	defer c.release()
	return unix.IoctlGetInt(fd, unix.SIOCINQ)
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

// Write writes all of p. A write that makes no progress for the write
// timeout fails.
func (c *fdConn) Write(p []byte) (int, error) {
	n, err := c.writeAll("write", len(p), func(fd int, blocking bool, done int) (int, error) {
		if blocking {
			return unix.Write(fd, p[done:])
		}
		return unix.SendmsgN(fd, p[done:], nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	})
	return int(n), err
}

// Writev writes all of bufs with as few system calls as it can.
func (c *fdConn) Writev(bufs [][]byte) (int64, error) {
	size := 0
	for _, b := range bufs {
		size += len(b)
	}
	rest, trimmed := bufs, 0 // what is left to write; bytes trimmed off bufs so far
	return c.writeAll("writev", size, func(fd int, blocking bool, done int) (int, error) {
		for k := done - trimmed; k > 0; {
			if k >= len(rest[0]) {
				k, trimmed, rest = k-len(rest[0]), trimmed+len(rest[0]), rest[1:]
			} else {
				rest[0], trimmed, k = rest[0][k:], trimmed+k, 0
			}
		}
		if blocking {
			return unix.Writev(fd, rest)
		}
		return unix.SendmsgBuffers(fd, rest, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	})
}

// writeAll calls write until size bytes are written: blocking on this
// thread while the server has one to spare, parked otherwise.
func (c *fdConn) writeAll(op string, size int, write func(fd int, blocking bool, done int) (int, error)) (int64, error) {
	fd, err := c.acquire()
	if err != nil {
		return 0, err
	}
	defer c.release()
	done := 0
	deadline := c.writeDeadline()
	for done < size {
		var n int
		if c.w.enter(c.limits.maxBlocked) {
			n, err = write(fd, true, done)
			c.w.leave()
		} else {
			n, err = write(fd, false, done)
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if err := c.w.park(fd, unix.EPOLLOUT, deadline); err != nil {
				return int64(done), c.opErr(op, err)
			}
			continue
		case err != nil:
			return int64(done), c.opErr(op, err)
		}
		if n > 0 {
			deadline = c.writeDeadline()
		}
		done += n
	}
	return int64(done), nil
}

// writeDeadline is when a write that starts waiting now gives up.
func (c *fdConn) writeDeadline() time.Time {
	if c.limits.writeTimeout <= 0 {
		return time.Time{}
	}
	return time.Now().Add(c.limits.writeTimeout)
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

// SetReadDeadline makes reads fail with os.ErrDeadlineExceeded once t
// has passed; it is kept to within parkAfter. The zero time clears it.
func (c *fdConn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		c.readDeadline.Store(0)
	} else {
		c.readDeadline.Store(t.UnixNano())
	}
	return nil
}

// Write deadlines are the write timeout's; a detached connection is
// stopped with CloseRead or Close.
func (c *fdConn) SetDeadline(time.Time) error      { return errors.ErrUnsupported }
func (c *fdConn) SetWriteDeadline(time.Time) error { return errors.ErrUnsupported }
