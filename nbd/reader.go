package nbd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"time"
)

// armIdle sets the idle timeout's deadline for the read the reader is
// about to block in, or clears it while requests are in flight (the last
// of them sets it again: see worker).
func (t *transmission) armIdle() {
	if t.idle <= 0 || t.conn == nil {
		return
	}
	if t.active.Load() == 0 {
		t.conn.SetReadDeadline(time.Now().Add(t.idle))
	} else {
		t.conn.SetReadDeadline(time.Time{})
	}
}

// errHandedOff ends a reader whose role a new goroutine took over.
var errHandedOff = errors.New("nbd: reader role handed off")

// read holds the reader role until the session ends or the role passes on.
func (t *transmission) read() {
	err := t.loop()
	if err == errHandedOff {
		return
	}
	t.readerIdle()
	t.readerDone <- err
}

// readerIdle sends the replies the reader left buffered. The reader calls
// it before any read that may block.
func (t *transmission) readerIdle() {
	t.wmu.Lock()
	t.readerBusy.Store(false)
	t.flushLocked()
	t.wmu.Unlock()
}

// loop reads requests until NBD_CMD_DISC, end of stream, or a fatal error.
func (t *transmission) loop() error {
	var hdr [requestHeaderLen]byte
	for {
		if t.br.Buffered() < requestHeaderLen {
			t.readerIdle()
			t.armIdle()
		}
		if _, err := io.ReadFull(t.br, hdr[:]); err != nil {
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded) && t.idle > 0 && !t.srv.shuttingDown():
				t.log.Info("client idle; closing the connection", "idle_timeout", t.idle)
				return nil
			case errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed):
				return nil
			}
			return fmt.Errorf("read request: %w", err)
		}
		if !t.readerBusy.Load() {
			t.readerBusy.Store(true)
		}
		r, err := parseRequest(hdr[:])
		if err != nil {
			return err
		}
		t.requests.Add(1)
		t.record(r)
		if r.cmd == CmdDisc {
			t.traceReq(r, 0, 0)
			return nil
		}
		errno := t.validate(r)
		var payload []byte
		inline, reserved := false, false
		if r.cmd == CmdWrite {
			if r.length > MaxPayload {
				// The payload cannot be skipped without reading it all;
				// answer, then drop the connection as the spec allows.
				t.send(func(w *replyWriter) { t.writeError(w, r, EINVAL, "write larger than the 32 MiB maximum") })
				return &ProtocolError{Phase: "transmission", Msg: fmt.Sprintf("NBD_CMD_WRITE of %d bytes exceeds the %d-byte maximum", r.length, MaxPayload)}
			}
			if t.br.Buffered() < int(r.length) {
				t.readerIdle()
			}
			if errno != 0 {
				// Refused: its payload is read and dropped, never held.
				if _, err := io.CopyN(io.Discard, t.br, int64(r.length)); err != nil {
					return fmt.Errorf("read %d-byte write payload: %w", r.length, err)
				}
			} else if t.mem != nil && r.length > inlineMax {
				if err := t.receive(r); err != nil {
					return err
				}
				continue
			} else {
				// A write for the workers holds its weight before its
				// payload is in memory.
				inline = t.inlinable(r)
				if reserved = !inline; reserved && !t.reserve(r) {
					return errBroken
				}
				payload = t.srv.bufs.get(int(r.length))
				if err := t.payload(len(payload)).fill(payload); err != nil {
					t.srv.bufs.put(payload)
					if reserved {
						t.unreserve(r)
					}
					return fmt.Errorf("read %d-byte write payload: %w", r.length, err)
				}
				t.bytesIn.Add(int64(r.length))
			}
		}
		if errno != 0 {
			t.traceReq(r, errno, 0)
			t.send(func(w *replyWriter) { t.writeError(w, r, errno, "") })
			continue
		}
		if r.cmd != CmdWrite {
			inline = t.inlinable(r)
		}
		if inline {
			if !t.runInline(r, payload) {
				return errHandedOff
			}
			continue
		}
		if err := t.dispatch(work{r, payload, reserved}); err != nil {
			return err
		}
	}
}

// Polling for the rest of a large payload: while a client sends one, the
// socket passes it on in pieces (a unix socket's queue holds a fifth of a
// megabyte), and the reader, faster than the client, would sleep and be
// woken for every piece, as would the client waiting for room. When
// nothing else of the session runs, and the client is on this machine and
// has a CPU of its own, the reader polls the socket for up to payloadSpin
// before it sleeps.
const payloadSpin = 100 * time.Microsecond

// payloadDirectMin is how many bytes of a payload must still be to come,
// beyond what the read buffer holds, for the reader to read them into
// place; fewer go through the buffer.
const payloadDirectMin = 32 << 10

var spinCPUs = runtime.NumCPU() > 1

// spinReader is a connection that can poll before it blocks (fdConn).
type spinReader interface {
	ReadSpin(p []byte, d time.Duration) (int, error)
}

// receive takes a large write to a memory export from the connection
// straight into the export's memory (Mem.receive), on the reader: one copy
// fewer, and nothing to hand to a worker.
func (t *transmission) receive(r request) error {
	start := t.clock()
	if err := t.mem.receive(int64(r.off), int64(r.length), t.payload(int(r.length)).fill); err != nil {
		return fmt.Errorf("read %d-byte write payload: %w", r.length, err)
	}
	t.bytesIn.Add(int64(r.length))
	t.send(func(w *replyWriter) { t.writeDone(w, r) })
	t.traceReq(r, 0, t.since(start))
	return nil
}

// spinWorth is the least a poll must bring in for the reader to go on
// polling for the same payload: after two polls in a row that bring in
// less, it sleeps until the payload ends. A client that trickles its
// payload in small pieces is not worth a CPU (it could make the server
// spin at the cost of a few bytes a time); an honest local client's
// pieces are tens of kilobytes.
const spinWorth = 4 << 10

// payloadReader reads a write's payload, in one piece or several.
type payloadReader struct {
	t      *transmission
	left   int  // bytes of the payload not read yet
	small  int  // polls in a row that brought in less than spinWorth
	noSpin bool // two did: sleep from now on
}

func (t *transmission) payload(n int) *payloadReader { return &payloadReader{t: t, left: n} }

// fill reads the next len(p) bytes of the payload. Bytes the read buffer
// holds are copied out of it; when payloadDirectMin bytes or more are
// still to come, the rest goes from the socket straight into p, polling
// first if nothing else of the session runs. Small payloads go through the
// buffer, which picks up the requests behind them in the same read.
func (pr *payloadReader) fill(p []byte) error {
	t := pr.t
	pr.left -= len(p)
	sr, ok := t.in.r.(spinReader)
	if !ok || pr.left+len(p)-t.br.Buffered() < payloadDirectMin {
		_, err := io.ReadFull(t.br, p)
		return err
	}
	n := 0
	if t.br.Buffered() > 0 {
		n, _ = t.br.Read(p)
	}
	for n < len(p) {
		spin := time.Duration(0)
		if !pr.noSpin && spinCPUs && t.active.Load() == 0 {
			spin = payloadSpin
		}
		m, err := sr.ReadSpin(p[n:], spin)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if spin > 0 && m < spinWorth && n+m < len(p) {
			pr.small++
			pr.noSpin = pr.small == 2
		} else if spin > 0 {
			pr.small = 0
		}
		n += m
	}
	return nil
}

// Inline execution: reads and writes up to inlineMax bytes run on the
// reader. inlineSlowRun requests in a row that each take longer than
// slowAfter show a backend that waits for a device, and the next
// inlineBackoff requests go to workers so that such waits overlap. One slow
// request alone shows nothing: a thread preempted for a moment, which
// happens dozens of times a second on a busy virtual machine, and which
// sent a fifth of a fast backend's requests down the slower path when one
// was enough.
const (
	inlineMax     = 64 << 10
	inlineSlow    = 50 * time.Microsecond
	inlineSlowRun = 3
	inlineBackoff = 1024
)

// inlinable reports whether r runs on the reader; ask once a request.
func (t *transmission) inlinable(r request) bool {
	if t.noInline > 0 {
		t.noInline--
		return false
	}
	switch r.cmd {
	case CmdRead:
		return r.length <= inlineMax
	case CmdWrite:
		return r.length <= inlineMax && r.flags&CmdFlagFUA == 0
	}
	return false
}

// slowAfter is how long an inline request of n bytes may run before it
// counts as slow: inlineSlow, and a nanosecond a byte (1 GB/s).
func slowAfter(n uint32) time.Duration {
	return inlineSlow + time.Duration(n)*time.Nanosecond
}

// runInline runs one request on the reader. It reports false when the
// request stalled and the reader role passed to another goroutine.
func (t *transmission) runInline(r request, payload []byte) bool {
	t.behind.Store(t.br.Buffered() > 0)
	ticket := t.inline.begin()
	t.srv.stalls.touch()
	start := time.Since(t.start) // monotonic clock only: one clock read
	t.handle(r, payload)
	if !t.inline.end(ticket) {
		// The stall watch took the reader role and counted this
		// request in flight.
		t.inflight.Done()
		return false
	}
	t.noteInline(time.Since(t.start)-start, r.length)
	return true
}

// noteInline counts an inline request of n bytes that took took: after
// inlineSlowRun slow ones in a row, each with more requests waiting
// behind it, the next inlineBackoff requests go to workers.
func (t *transmission) noteInline(took time.Duration, n uint32) {
	if took <= slowAfter(n) || !t.requestsWaiting() {
		// Fast, or slow with nothing behind it: workers would not have
		// overlapped it with anything, only added a hand-off. On a slow
		// machine (a VM without acceleration) every request is slow by
		// the clock, and a client at queue depth 1 lost a third of its
		// rate to that hand-off.
		t.slowRun = 0
	} else if t.slowRun++; t.slowRun == inlineSlowRun {
		t.slowRun = 0
		t.noInline = inlineBackoff
	}
}

// requestsWaiting reports whether more of the client's requests have
// arrived: in the read buffer, or in the socket's queue.
func (t *transmission) requestsWaiting() bool {
	return t.br.Buffered() > 0 || t.socketQueued()
}

// socketQueued reports whether the connection's socket holds bytes not
// read yet; true where that cannot be told.
func (t *transmission) socketQueued() bool {
	q, ok := t.in.r.(interface{ Queued() (int, error) })
	if !ok {
		return true // cannot tell: assume they have, as before
	}
	n, err := q.Queued()
	return err != nil || n > 0
}

// takeOver is the stall watch's move when the inline request that held
// ticket at its last look still runs: if it wins the race against the
// request's end, a new goroutine becomes the reader.
func (t *transmission) takeOver(ticket uint64) bool {
	if !t.behind.Load() && !t.socketQueued() {
		// Nothing waits behind the request: a new reader would find
		// nothing to read, and the hand-off to workers that follows a
		// steal would only slow the client down.
		return false
	}
	// The stalled request counts in flight before the steal: once the
	// steal is done its old reader may end it at any moment, and Done
	// must never come before this Add.
	t.inflight.Add(1)
	if !t.inline.steal(ticket) {
		t.inflight.Done()
		return false
	}
	if t.afterSteal != nil {
		t.afterSteal()
	}
	t.log.Debug("inline request stalled; reading on in a new goroutine")
	go func() {
		t.noInline = inlineBackoff
		t.read()
	}()
	return true
}

// inlineGate tells the stall watch whether a request runs on the reader,
// and settles the race between that request's end and the watch taking
// the reader role from it. Its counter rises by one when a request begins
// and by one when it ends or is stolen, so it is odd while one runs, and
// a ticket (the value at begin) names one run.
type inlineGate struct{ n atomic.Uint64 }

// begin marks a request running and returns its ticket.
func (g *inlineGate) begin() uint64 { return g.n.Add(1) }

// end marks the request done; false means the watch stole the role first.
func (g *inlineGate) end(ticket uint64) bool { return g.n.CompareAndSwap(ticket, ticket+1) }

// look returns the current ticket and whether its request runs.
func (g *inlineGate) look() (ticket uint64, running bool) {
	v := g.n.Load()
	return v, v&1 == 1
}

// steal takes the role from the request holding ticket, if it still runs.
func (g *inlineGate) steal(ticket uint64) bool {
	return ticket&1 == 1 && g.n.CompareAndSwap(ticket, ticket+1)
}
