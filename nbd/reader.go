package nbd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// work is a request read and checked, ready to run.
type work struct {
	r       request
	payload []byte // a write's data: from Server.bufs, or still in the read buffer (inPlace)
	inPlace bool   // payload is the read buffer's, until next discards it
}

// next takes the read side and reads until it has a request to run, which
// it returns with its weight reserved and counted active. Requests that
// need no worker (refused ones, large writes into memory) are answered
// here. It reports false once reading has ended. counted says the worker
// counted itself among the readers already.
func (t *transmission) next(counted bool) (work, bool) {
	if !counted {
		t.readers.Add(1)
	}
	t.rmu.Lock()
	t.readers.Add(-1)
	t.holding.Store(true)
	defer t.rmu.Unlock()
	defer t.unhold() // the next reader may be a while: nothing stays held
	for !t.readDone {
		if t.ctx.Err() != nil {
			t.readDone = true
			break
		}
		w, got, err := t.readRequest()
		if got == readEnd {
			t.readDone, t.readErr = true, err
			break
		}
		if got == readAnswered {
			continue
		}
		if t.inline && runsInline(w.r) {
			// Memory (inline): done here.
			a := t.handle(w.r, w.payload)
			if w.inPlace {
				t.br.Discard(len(w.payload))
			} else {
				t.srv.bufs.put(w.payload)
			}
			t.reply(w.r, a)
			t.finish(w.r)
			continue
		}
		// Someone must read on while this request runs.
		if t.readers.Load() == 0 && t.alive.Load() < t.maxWorkers {
			t.spawn()
		}
		return w, true
	}
	return work{}, false
}

// runsInline reports whether a request to a memory export is run on the
// worker that read it: reads and writes up to inlineMax, FUA writes
// included, and FLUSH. On memory none of them waits for a device (a
// tmpfs's fdatasync and RWF_DSYNC return at once, Mem's Sync is nothing),
// and a hand-off to another worker costs more than the request: ext4 on
// a tmpfs file export sends a FLUSH and a FUA write for every fsync.
func runsInline(r request) bool {
	switch r.cmd {
	case CmdRead, CmdWrite:
		return r.length <= inlineMax
	case CmdFlush:
		return true
	}
	return false
}

// inPlace reports whether r runs inline with its data in the connection's
// own buffers: a write whose data the backend takes from the read buffer,
// where it arrived; a read under largeWrite, made into the reply buffer
// behind its header; a FLUSH.
func (t *transmission) inPlace(r request) bool {
	if !t.inline {
		return false
	}
	switch r.cmd {
	case CmdRead:
		return r.length < largeWrite
	case CmdWrite:
		return r.length <= inlineMax && int(r.length) <= t.br.Size()
	case CmdFlush:
		return true
	}
	return false
}

// inlineMax is the largest read or write of memory run on the worker that
// read it. A larger copy is worth a hand-off: run inline, a 1 MiB write
// held the read side through its copy, so the next request's payload
// waited behind it (fio, 1M writes at QD4 to a tmpfs file: 1,670 IOPS
// inline, 2,040-2,360 handed off; nbdkit's file plugin ~2,000).
const inlineMax = 64 << 10

// What readRequest got.
type readResult int

const (
	readRun      readResult = iota // a request to run
	readAnswered                   // a request answered already
	readEnd                        // the end of the session, with the error that ended it (nil for a clean end)
)

// readRequest reads one request.
func (t *transmission) readRequest() (w work, got readResult, err error) {
	if t.br.Buffered() < requestHeaderLen {
		t.unhold() // the read may block: the held replies go first
		t.armIdle()
	}
	// The header is parsed where it lies in the read buffer.
	hdr, err := t.br.Peek(requestHeaderLen)
	t.holding.Store(true)
	if err == io.EOF && len(hdr) > 0 {
		err = io.ErrUnexpectedEOF // the client went away in the middle of a header
	}
	if err != nil {
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded) && t.idle > 0 && !t.srv.shuttingDown():
			t.log.Info("client idle; closing the connection", "idle_timeout", t.idle)
			return work{}, readEnd, nil
		case errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed):
			return work{}, readEnd, nil
		}
		if t.ctx.Err() != nil { // the session broke and closed the connection
			return work{}, readEnd, nil
		}
		return work{}, readEnd, fmt.Errorf("read request: %w", err)
	}
	r, err := parseRequest(hdr)
	if err != nil {
		return work{}, readEnd, err
	}
	t.br.Discard(requestHeaderLen)
	t.requests.Add(1)
	t.record(r)
	if r.cmd == CmdDisc {
		t.traceReq(r, 0, 0)
		return work{}, readEnd, nil
	}
	errno := t.validate(r)
	if r.cmd == CmdWrite && r.length > t.maxPayload {
		errno = EINVAL
	}
	if errno != 0 {
		// Answered at once; a refused write's payload is then read and
		// dropped through a small buffer, never held, and the session
		// goes on.
		t.traceReq(r, errno, 0)
		t.send(func(w *replyWriter) { t.writeError(w, r, errno, "") })
		if r.cmd == CmdWrite {
			t.unhold()
			if _, err := io.CopyN(io.Discard, t.br, int64(r.length)); err != nil {
				return work{}, readEnd, fmt.Errorf("read %d-byte write payload: %w", r.length, err)
			}
		}
		return work{}, readAnswered, nil
	}
	if r.cmd == CmdWrite && t.mem != nil && r.length >= memDirectMin {
		if err := t.receive(r); err != nil {
			return work{}, readEnd, err
		}
		return work{}, readAnswered, nil
	}
	// A request holds its weight before its payload is in memory: a
	// client past its budget waits here, and nothing more of it is read.
	if !t.reserve(r) {
		return work{}, readEnd, nil // the session broke meanwhile
	}
	t.begin()
	w = work{r: r}
	if r.cmd == CmdWrite {
		if err := t.readPayload(&w); err != nil {
			t.finish(r)
			return work{}, readEnd, fmt.Errorf("read %d-byte write payload: %w", r.length, err)
		}
		t.bytesIn.Add(int64(r.length))
	}
	return w, readRun, nil
}

// readPayload reads a write's data. A write run inline leaves its data
// where it is, in the read buffer, and the backend takes it from there:
// next discards it once the write is done. (Copied out into a buffer of
// its own, a 4k write's data was 460 of the 3,450 instructions the write
// took in user space, and getting the buffer and putting it back 300
// more; callgrind, as for parkLock.) Any other write's data is read into
// a buffer from Server.bufs, since the read side moves on while it runs.
func (t *transmission) readPayload(w *work) error {
	n := int(w.r.length)
	if t.br.Buffered() < n {
		t.unhold()
	}
	defer t.holding.Store(true)
	if t.inPlace(w.r) {
		p, err := t.br.Peek(n)
		w.payload, w.inPlace = p, true
		return err
	}
	w.payload = t.srv.bufs.get(n)
	if _, err := io.ReadFull(t.br, w.payload); err != nil {
		t.srv.bufs.put(w.payload)
		return err
	}
	return nil
}

// memDirectMin is the size from which a write to a memory export is read
// from the connection straight into the export's memory (Mem.receive),
// one copy fewer than through a buffer.
const memDirectMin = 64 << 10

// receive takes a large write to a memory export into the export's
// memory and answers it.
func (t *transmission) receive(r request) error {
	start := t.clock()
	t.unhold()
	fill := func(p []byte) error { _, err := io.ReadFull(t.br, p); return err }
	if err := t.mem.receive(int64(r.off), int64(r.length), fill); err != nil {
		return fmt.Errorf("read %d-byte write payload: %w", r.length, err)
	}
	t.bytesIn.Add(int64(r.length))
	t.dirty.Store(true)
	t.send(func(w *replyWriter) { t.writeDone(w, r) })
	t.traceReq(r, 0, t.since(start))
	return nil
}

// The idle timeout: while no request is in flight, the read waiting for
// the next one has a deadline; while any is, none. begin and finish count
// requests in flight and move the deadline when the count leaves or
// reaches zero.

// The drain of a connection without CloseRead (TLS) stops reading with a
// read deadline in the past. The idle timeout's deadlines are set under
// the same lock and keep to it once it is set: one moved after the drain
// had the reader wait out the whole idle timeout, past Shutdown's ctx.

// stopReading makes the read of the next request fail at once, for good.
func (t *transmission) stopReading() {
	t.idleMu.Lock()
	defer t.idleMu.Unlock()
	t.draining = true
	if t.conn != nil {
		t.conn.SetReadDeadline(time.Now())
	}
}

// readDeadline sets the read deadline, under idleMu, unless draining.
func (t *transmission) readDeadline(d time.Time) {
	if !t.draining {
		t.conn.SetReadDeadline(d)
	}
}

// armIdle sets the deadline for the read about to start.
func (t *transmission) armIdle() {
	if t.idle <= 0 || t.conn == nil {
		return
	}
	t.idleMu.Lock()
	if t.active.Load() == 0 {
		t.readDeadline(time.Now().Add(t.idle))
	} else {
		t.readDeadline(time.Time{})
	}
	t.idleMu.Unlock()
}

// begin counts a request in flight.
func (t *transmission) begin() {
	if t.idle <= 0 || t.conn == nil {
		t.active.Add(1)
		return
	}
	t.idleMu.Lock()
	if t.active.Add(1) == 1 {
		t.readDeadline(time.Time{})
	}
	t.idleMu.Unlock()
}

// finish ends a request begun with begin: its weight is returned, and the
// last one in flight starts the idle clock again.
func (t *transmission) finish(r request) {
	t.unreserve(r)
	if t.idle <= 0 || t.conn == nil {
		t.active.Add(-1)
		return
	}
	t.idleMu.Lock()
	if t.active.Add(-1) == 0 {
		t.readDeadline(time.Now().Add(t.idle))
	}
	t.idleMu.Unlock()
}
