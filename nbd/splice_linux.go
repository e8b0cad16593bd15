package nbd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Large reads from a file export travel without passing through the
// server's memory: splice(2) moves references to the file's page-cache
// pages into a pipe, and from the pipe into the socket, so the server
// copies nothing and the client's read from its socket is the one copy.
// A pread-and-write reply copies the data twice.
//
// The pipe is filled before the reply header is written: a read error is
// still answered with an error, never with a reply cut short.

// spliceMin is the smallest read worth a pipe; below it a copy is cheaper
// than the extra system calls.
const spliceMin = 128 << 10

// pipeSize is the capacity asked of each pipe (the default pipe-max-size
// allows it), and so bounds the reads that can be spliced: those spanning
// at most pipeSize/pagesize pages of the file.
const pipeSize = 1 << 20

// pipeFiller is a backend that can move its bytes into a pipe.
type pipeFiller interface {
	// canSplice reports whether fillPipe may work.
	canSplice() bool
	// fillPipe moves exactly n bytes at off into the pipe whose write
	// end is fd, or fails with nothing promised to the client.
	fillPipe(fd int, off int64, n int) error
}

// errCopyInstead is fillPipe's error when the read must take the copying
// path: the file cannot splice, or the pipe filled up.
var errCopyInstead = errors.New("nbd: cannot splice this read")

func (b *File) canSplice() bool { return !b.noSplice.Load() }

// fillPipe splices n bytes of the file at off into the pipe.
func (b *File) fillPipe(fd int, off int64, n int) error {
	for n > 0 {
		// Non-blocking on the pipe: a full pipe must not hang the read.
		m, err := unix.Splice(b.fd, &off, fd, nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return errCopyInstead
		case err == unix.EINVAL || err == unix.ENOSYS:
			b.noSplice.Store(true)
			return errCopyInstead
		case err != nil:
			return fmt.Errorf("splice from %s at %d: %w", b.f.Name(), off, err)
		case m == 0:
			return fmt.Errorf("splice from %s at %d: %w", b.f.Name(), off, io.ErrUnexpectedEOF)
		}
		n -= int(m)
	}
	return nil
}

// pipe is a kernel pipe used to splice one reply.
type pipe struct {
	r, w int
	size int // capacity
}

// pipePool keeps a few empty pipes; a pipe that may hold data is closed.
type pipePool struct {
	mu     sync.Mutex
	free   []*pipe
	closed bool
}

const maxFreePipes = 16

func (pp *pipePool) get() (*pipe, error) {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	p := &pipe{r: fds[0], w: fds[1]}
	size, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, pipeSize)
	if err != nil {
		// Over the per-user pipe allowance: keep the default size.
		size, err = unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
	}
	if err != nil {
		p.close()
		return nil, err
	}
	p.size = size
	return p, nil
}

// put returns an empty pipe; a pipe that still holds data is closed.
func (pp *pipePool) put(p *pipe, empty bool) {
	if empty {
		pp.mu.Lock()
		if !pp.closed && len(pp.free) < maxFreePipes {
			pp.free = append(pp.free, p)
			pp.mu.Unlock()
			return
		}
		pp.mu.Unlock()
	}
	p.close()
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// closeAll closes the pooled pipes, and those put back later.
func (pp *pipePool) closeAll() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	pp.closed = true
	for _, p := range pp.free {
		p.close()
	}
	pp.free = nil
}

// splice moves n bytes from the pipe's read end into the socket, waiting
// in the runtime's poller while the socket is full, for as long as the
// peer takes some within the write timeout, as writev does.
func (w *rawWriter) splice(pipeR, n int) error {
	w.done = 0
	var serr error
	err := w.rc.Write(func(fd uintptr) bool {
		for n > 0 {
			m, err := unix.Splice(pipeR, nil, int(fd), nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_MORE|unix.SPLICE_F_NONBLOCK)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				w.full()
				return false // wait until the socket takes more
			case err != nil:
				serr = os.NewSyscallError("splice", err)
				return true
			case m == 0:
				serr = fmt.Errorf("splice: %w", io.ErrUnexpectedEOF)
				return true
			}
			n -= int(m)
			w.done += m
		}
		return true
	})
	w.settle()
	if err != nil {
		return err
	}
	return serr
}

// spliceRead fills a pipe with the data of a read from the backend, if
// the backend, the connection and the size allow it, and returns how to
// send it. It reports spliced false when the read must take the copying
// path; an error means the backend failed and nothing is to be sent.
func (t *transmission) spliceRead(r request) (send func(), spliced bool, err error) {
	f, ok := t.export.Backend.(pipeFiller)
	if !ok || t.rw == nil || r.length < spliceMin || !f.canSplice() {
		return nil, false, nil
	}
	p, err := t.srv.pipes.get()
	if err != nil {
		return nil, false, nil
	}
	// Each pipe buffer holds at most one page of the file.
	pg := os.Getpagesize()
	if pages := (int(r.off%uint64(pg)) + int(r.length) + pg - 1) / pg; pages*pg > p.size {
		t.srv.pipes.put(p, true)
		return nil, false, nil
	}
	if err := f.fillPipe(p.w, int64(r.off), int(r.length)); err != nil {
		t.srv.pipes.put(p, false)
		if errors.Is(err, errCopyInstead) {
			return nil, false, nil
		}
		return nil, true, err
	}
	return func() {
		drained := false
		t.sendNow(func(w *replyWriter) error {
			t.writeReadHeader(w, r, int(r.length))
			if err := w.Flush(); err != nil {
				return err
			}
			if err := t.rw.splice(p.r, int(r.length)); err != nil {
				return err
			}
			drained = true
			return nil
		})
		t.srv.pipes.put(p, drained)
	}, true, nil
}
