package nbd

import (
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Idle sockets do not hold threads. A detached socket (fdConn) blocks in
// read(2) or write(2) on the calling thread, which is what makes a busy
// connection fast, but a thread for every idle or stalled client would
// let ten thousand of them exhaust the process's threads (Go's limit, or
// a pids cgroup's) and end it for everyone. So a blocking call is only
// made while the server has a thread slot free, and only for parkAfter:
// the socket's SO_RCVTIMEO and SO_SNDTIMEO end it then. Past that, or
// with no slot, the call parks: the goroutine waits for the socket in the
// server's own epoll set, which one goroutine watches for all of them,
// and holds no thread.
//
// The runtime's poller cannot be used for this: it wants the socket
// non-blocking for good, and the blocking calls need it blocking.

// parkAfter is how long a blocking call may wait before it parks.
const parkAfter = time.Second

// DefaultMaxBlocked is how many threads the connections of a server may
// hold at once blocked in socket calls.
const DefaultMaxBlocked = 32

// waiter is a server's count of threads blocked in socket calls, and its
// epoll set for the calls that park instead.
type waiter struct {
	blocked atomic.Int32

	once    sync.Once
	epfd    int
	stop    int // an eventfd in the set: close wakes the watch with it
	err     error
	mu      sync.Mutex
	waiting map[int32]chan struct{}
	next    int32
	closed  bool
}

// enter reports whether a thread may block in a socket call, with at
// most max blocked at once; leave ends the call.
func (w *waiter) enter(max int32) bool {
	if w.blocked.Add(1) > max && max > 0 {
		w.blocked.Add(-1)
		return false
	}
	return true
}

func (w *waiter) leave() { w.blocked.Add(-1) }

// park waits until fd has one of events (EPOLLIN, EPOLLOUT), or hangs up,
// or deadline passes (os.ErrDeadlineExceeded), without holding a thread.
// It watches a duplicate of fd, so that a reader and a writer of one
// socket can park at once.
func (w *waiter) park(fd int, events uint32, deadline time.Time) error {
	w.once.Do(w.start)
	if w.err != nil {
		return w.err
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("dup", err)
	}
	defer unix.Close(dup)
	ch := make(chan struct{})
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return net.ErrClosed
	}
	if w.next++; w.next <= 0 {
		w.next = 1
	}
	tok := w.next
	w.waiting[tok] = ch
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.waiting, tok)
		w.mu.Unlock()
	}()
	ev := unix.EpollEvent{Events: events | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: tok}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, dup, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	defer unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, dup, nil)
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ch:
		return nil
	case <-timeout:
		return os.ErrDeadlineExceeded
	}
}

func (w *waiter) start() {
	w.epfd, w.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if w.err != nil {
		w.err = os.NewSyscallError("epoll_create1", w.err)
		return
	}
	if w.stop, w.err = unix.Eventfd(0, unix.EFD_CLOEXEC); w.err != nil {
		unix.Close(w.epfd)
		w.err = os.NewSyscallError("eventfd", w.err)
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: 0} // token 0: never a call's
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, w.stop, &ev); err != nil {
		unix.Close(w.epfd)
		unix.Close(w.stop)
		w.err = os.NewSyscallError("epoll_ctl", err)
		return
	}
	w.waiting = map[int32]chan struct{}{}
	go w.watch()
}

// watch wakes parked calls as their sockets become ready, until close.
func (w *waiter) watch() {
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		w.mu.Lock()
		stop := err != nil
		for _, ev := range events[:max(n, 0)] {
			if ev.Fd == 0 {
				stop = true
			} else if ch, ok := w.waiting[ev.Fd]; ok {
				close(ch)
				delete(w.waiting, ev.Fd)
			}
		}
		if stop {
			// Wake everyone; their calls find their sockets as they are.
			w.closed = true
			for tok, ch := range w.waiting {
				close(ch)
				delete(w.waiting, tok)
			}
			unix.Close(w.epfd)
			unix.Close(w.stop)
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
	}
}

// close ends the watch, if it runs; calls parked then are woken.
func (w *waiter) close() {
	started := true
	w.once.Do(func() { started, w.err = false, net.ErrClosed })
	if !started || w.err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed { // the watch closes w.stop only once closed is set
		w.closed = true
		unix.Write(w.stop, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
}
