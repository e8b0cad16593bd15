package nbd

import (
	"io"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// The transmission phase reads and writes its socket, and a file export in
// memory (tmpfs), with raw system calls: calls that never block, made
// without entering the runtime's system-call state.
//
// Why: a goroutine that enters a system call the ordinary way wakes the
// runtime's monitor thread (sysmon) when every P is idle, and sysmon then
// polls every 20 µs for about a millisecond before it sleeps again. At
// queue depth 1 every request finds the server idle, so every request
// paid for that polling: measured with strace in a lab VM (TCG, 2 vCPUs),
// 2.4 nanosleeps a 4k write, and 850 µs of server CPU a 4k write to a
// tmpfs file at queue depth 1 against 440 µs for nbdkit, whose threads
// simply block in recv (520 µs with raw calls). The socket is
// non-blocking, so a raw read or write returns at once; when it would
// block (EAGAIN), the goroutine waits in the runtime's poller as any
// network read does (syscall.RawConn), deadlines included.
//
// Two ways to wait that look cheaper and are not, measured in a lab VM
// (TCG, 2 vCPUs, a tmpfs file export on loopback, paired rounds against
// nbdkit's file plugin):
//   - A reader that blocks its thread in ppoll(2), as nbdkit's threads
//     block in recv, instead of parking in the poller: 4k writes at queue
//     depth 1 took 730-920 µs of server CPU and 3.0-3.6 context switches
//     a request, against 300-410 µs and 1.3 parked (nbdkit 250-440).
//   - SO_RCVLOWAT raised to the payload still to come, so that the
//     poller wakes the reader once for a 1 MiB write rather than for each
//     segment: 1M writes at QD4 ran at half the rate with twice the CPU.
// What the poller costs at queue depth 1 is two epoll_pwait calls and a
// read that finds nothing per request (perf stat on the syscall
// tracepoints: 1.9 reads, 1.85 epoll_pwait, 1 pread64 and 1 writev per
// 4k read), and the runtime's park and wake path in user space.

// useRawIO makes the session's reads (through in, under its buffered
// reader, which keeps what it holds) and replies use raw system calls,
// where the connection has a descriptor; it is not called for TLS.
func (t *transmission) useRawIO(in *connReader) {
	sc, ok := t.conn.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	t.rw = newRawWriter(rc, t.conn, t.wtime)
	in.r, t.bw.w = newRawReader(rc), t.rw
}

// rawReader reads a socket with raw system calls. One goroutine at a
// time reads (the transmission's read side); the state of the call in
// progress lives here, so a read allocates nothing.
type rawReader struct {
	rc    syscall.RawConn
	p     []byte
	n     int
	errno syscall.Errno
	try   func(fd uintptr) bool // r.read, bound once
}

func newRawReader(rc syscall.RawConn) *rawReader {
	r := &rawReader{rc: rc}
	r.try = r.read
	return r
}

func (r *rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p, r.n, r.errno = p, 0, 0
	err := r.rc.Read(r.try)
	r.p = nil
	switch {
	case err != nil:
		return 0, err // a deadline passed, or the connection was closed
	case r.errno != 0:
		return 0, os.NewSyscallError("read", r.errno)
	case r.n == 0:
		return 0, io.EOF
	}
	return r.n, nil
}

// read makes one read(2); false means it would block, so RawConn waits
// in the poller and calls it again.
func (r *rawReader) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.p[0])), uintptr(len(r.p)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		r.n, r.errno = int(n), e
		return true
	}
}

// rawWriter writes a socket with raw system calls, under the
// transmission's write lock: one call at a time.
//
// A write that finds the socket full waits in the poller, and fails once
// the peer has taken nothing for timeout (Server.WriteTimeout): the
// deadline is set when the socket fills, moved when it fills again after
// the peer took some, and cleared once the write is done, so that a write
// that never waits reads no clock and sets no timer. Moving a deadline
// ahead of the replies, with two clock readings a request, cost 4k writes
// at queue depth 1 310 of their 3,940 instructions in user space
// (callgrind, as for parkLock).
type rawWriter struct {
	rc      syscall.RawConn
	dl      deadliner // nil for no timeout
	timeout time.Duration
	armed   bool  // a deadline is set
	armedAt int64 // done when it was set
	scratch [4]syscall.Iovec
	iov     []syscall.Iovec
	done    int64
	errno   syscall.Errno
	try     func(fd uintptr) bool // w.write, bound once
}

// deadliner is the part of a net.Conn a rawWriter sets deadlines on.
type deadliner interface{ SetWriteDeadline(time.Time) error }

func newRawWriter(rc syscall.RawConn, dl deadliner, timeout time.Duration) *rawWriter {
	w := &rawWriter{rc: rc, timeout: timeout}
	if dl != nil && timeout > 0 {
		w.dl = dl
	}
	w.try = w.write
	return w
}

func (w *rawWriter) Write(p []byte) (int, error) {
	n, err := w.writev(p, nil)
	return int(n), err
}

// writev sends every byte of a and then b, in as few system calls as the
// socket buffer allows.
func (w *rawWriter) writev(a, b []byte) (int64, error) {
	w.iov, w.done, w.errno = w.scratch[:0], 0, 0
	for _, p := range [2][]byte{a, b} {
		if len(p) > 0 {
			w.iov = append(w.iov, syscall.Iovec{Base: &p[0], Len: uint64(len(p))})
		}
	}
	var err error
	if len(w.iov) > 0 {
		err = w.rc.Write(w.try)
	}
	w.settle()
	clear(w.scratch[:]) // hold on to no caller's memory
	w.iov = nil
	if err != nil {
		return w.done, err
	}
	if w.errno != 0 {
		return w.done, os.NewSyscallError("writev", w.errno)
	}
	return w.done, nil
}

// write makes writev(2) calls until everything is sent, the socket would
// block (false: RawConn waits in the poller and calls it again), or a
// call fails.
func (w *rawWriter) write(fd uintptr) bool {
	for len(w.iov) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iov[0])), uintptr(len(w.iov)))
		switch e {
		case 0:
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			w.full()
			return false
		default:
			w.errno = e
			return true
		}
		w.done += int64(n)
		for left := uint64(n); left > 0; {
			if left < w.iov[0].Len {
				w.iov[0].Base = (*byte)(unsafe.Add(unsafe.Pointer(w.iov[0].Base), left))
				w.iov[0].Len -= left
				break
			}
			left -= w.iov[0].Len
			w.iov = w.iov[1:]
		}
	}
	return true
}

// full is called by a write that found the socket full, before it waits in
// the poller: it sets the deadline, or moves it if the peer took some of
// the write since it was set.
func (w *rawWriter) full() {
	if w.dl != nil && (!w.armed || w.done > w.armedAt) {
		w.armed, w.armedAt = true, w.done
		w.dl.SetWriteDeadline(time.Now().Add(w.timeout))
	}
}

// settle clears the deadline of a write that waited, once it is done.
func (w *rawWriter) settle() {
	if w.armed {
		w.armed = false
		w.dl.SetWriteDeadline(time.Time{})
	}
}

// rawFileMax bounds the file reads and writes made raw: a raw call holds
// its P and cannot be preempted, so only copies of a few hundred
// microseconds at most are made that way.
const rawFileMax = 1 << 20

// rawPread reads len(p) bytes at off from a file in memory, as
// os.File.ReadAt does (io.EOF at the end).
func rawPread(fd int, p []byte, off int64) (int, error) {
	return rawFileIO(syscall.SYS_PREAD64, "pread", fd, p, off)
}

// rawPwrite writes p at off to a file in memory.
func rawPwrite(fd int, p []byte, off int64) (int, error) {
	return rawFileIO(syscall.SYS_PWRITE64, "pwrite", fd, p, off)
}

// rawFileIO makes pread64 or pwrite64 calls (trap) until all of p is
// moved; a read that moves nothing has reached the end of the file.
func rawFileIO(trap uintptr, name string, fd int, p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		r, _, e := syscall.RawSyscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[done])), uintptr(len(p)-done), uintptr(off+int64(done)), 0, 0)
		switch {
		case e == syscall.EINTR:
			continue
		case e != 0:
			return done, os.NewSyscallError(name, e)
		case r == 0:
			return done, io.EOF // moved nothing: the end of the file
		}
		done += int(r)
	}
	return done, nil
}
