package nbd

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("nbd: server closed")

// Server serves Exports over the NBD protocol. Set the fields before the
// first call to Serve and do not change them afterwards.
type Server struct {
	// Exports are the exports served. The first one also answers the empty
	// export name.
	Exports []*Export
	// TLSConfig, when set, makes TLS mandatory: every option but
	// NBD_OPT_STARTTLS and NBD_OPT_ABORT is refused before TLS.
	TLSConfig *tls.Config
	// Logger receives a line per connection at Info and a line per request
	// at Debug. Nil means slog.Default().
	Logger *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	closing   atomic.Bool
	wg        sync.WaitGroup
	bufs      bufPool
	pipes     pipePool
	stalls    stallWatch
}

type serverConn struct {
	mu           sync.Mutex
	conn         net.Conn
	transmitting bool
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) shuttingDown() bool { return s.closing.Load() }

func (s *Server) lookup(name string) *Export {
	for _, e := range s.Exports {
		if e.Name == name {
			return e
		}
	}
	if name == "" && len(s.Exports) > 0 {
		return s.Exports[0]
	}
	return nil
}

// Serve accepts connections on l and serves each in its own goroutine. It
// always returns a non-nil error; after Shutdown or Close, ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = map[net.Listener]struct{}{}
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger().Warn("accept failed; retrying", "listener", l.Addr().String(), "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		go s.ServeConn(context.Background(), c)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// ServeConn serves one client connection until it disconnects, and closes
// it. It returns why the session ended: nil for a clean disconnect.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) (err error) {
	sc := &serverConn{conn: c}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		c.Close()
		return ErrServerClosed
	}
	if s.conns == nil {
		s.conns = map[*serverConn]struct{}{}
	}
	s.conns[sc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, sc)
		s.mu.Unlock()
		sc.close()
		s.wg.Done()
	}()
	log := s.logger().With("peer", peerName(c))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("nbd: panic serving %s: %v", peerName(c), p)
			log.Error("session crashed; other sessions are unaffected", "panic", p, "stack", string(debug.Stack()))
		}
	}()
	sess := newSession(s, c, c)
	if err := sess.negotiate(ctx); err != nil {
		switch {
		case errors.Is(err, errAbort):
			log.Debug("client aborted the handshake")
			return nil
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			log.Info("client closed the connection during the handshake")
			return nil
		}
		log.Warn("handshake failed; closing connection", "err", err)
		return err
	}
	sc.mu.Lock()
	if s.closing.Load() {
		sc.mu.Unlock()
		return ErrServerClosed
	}
	if !sess.tls {
		fc, err := detach(sess.conn)
		if err != nil {
			sc.mu.Unlock()
			log.Error("cannot serve the connection", "err", err)
			return err
		}
		sess.switchConn(fc)
	}
	sc.conn, sc.transmitting = sess.conn, true
	sc.mu.Unlock()
	t := newTransmission(sess, log)
	return t.run()
}

// close ends the connection at once.
func (sc *serverConn) close() {
	sc.mu.Lock()
	sc.conn.Close()
	sc.mu.Unlock()
}

// drain stops a connection from reading new requests; one still in the
// handshake is closed.
func (sc *serverConn) drain() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if !sc.transmitting {
		sc.conn.Close()
	} else if cr, ok := sc.conn.(interface{ CloseRead() error }); ok {
		cr.CloseRead()
	} else {
		sc.conn.SetReadDeadline(time.Now())
	}
}

func peerName(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil && a.String() != "" && a.String() != "@" {
		return a.String()
	}
	if a := c.LocalAddr(); a != nil {
		return "unix:" + a.String()
	}
	return "?"
}

// Shutdown stops the server gracefully: it closes the listeners, stops
// reading new requests, lets the requests in flight complete and be
// answered, flushes every export and closes the connections. If ctx ends
// first, the remaining connections are closed at once and ctx's error is
// returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.drain()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		s.Close()
		<-done
		err = ctx.Err()
	}
	s.pipes.closeAll()
	for _, e := range s.Exports {
		if serr := e.Backend.Sync(); serr != nil && err == nil {
			err = fmt.Errorf("nbd: flush export %q: %w", e.Name, serr)
		}
	}
	return err
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.close()
	}
	s.pipes.closeAll()
	return nil
}

// request is one parsed transmission request.
type request struct {
	flags  CmdFlags
	cmd    Cmd
	cookie uint64
	off    uint64
	length uint32
}

func parseRequest(b []byte) (request, error) {
	if m := binary.BigEndian.Uint32(b); m != MagicRequest {
		return request{}, &ProtocolError{Phase: "transmission", Msg: fmt.Sprintf("request magic %#x, want %#x", m, MagicRequest)}
	}
	return request{
		flags:  CmdFlags(binary.BigEndian.Uint16(b[4:])),
		cmd:    Cmd(binary.BigEndian.Uint16(b[6:])),
		cookie: binary.BigEndian.Uint64(b[8:]),
		off:    binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// allowedFlags lists the flags each command accepts.
var allowedFlags = map[Cmd]CmdFlags{
	CmdRead:        CmdFlagDF,
	CmdWrite:       CmdFlagFUA,
	CmdDisc:        0,
	CmdFlush:       0,
	CmdTrim:        CmdFlagFUA,
	CmdCache:       0,
	CmdWriteZeroes: CmdFlagFUA | CmdFlagNoHole | CmdFlagFastZero,
	CmdBlockStatus: CmdFlagReqOne,
}

// check validates a request against the export and the session, in the
// order the specification implies: malformed, forbidden, out of range.
func (s *session) check(r request) Errno {
	allowed, known := allowedFlags[r.cmd]
	if !s.structured {
		allowed &^= CmdFlagDF
	}
	if !known || r.flags&^allowed != 0 {
		return EINVAL
	}
	e := s.export
	switch r.cmd {
	case CmdWrite, CmdTrim, CmdWriteZeroes:
		if e.ReadOnly {
			return EPERM
		}
	case CmdBlockStatus:
		if !s.metaAlloc || r.length == 0 {
			return EINVAL
		}
	case CmdRead:
		if r.length > MaxPayload {
			return EINVAL
		}
	case CmdFlush:
		return 0
	}
	size := uint64(e.Backend.Size())
	if r.off > size || uint64(r.length) > size-r.off {
		if r.cmd == CmdWrite || r.cmd == CmdWriteZeroes {
			return ENOSPC
		}
		return EINVAL
	}
	return 0
}

// transmission runs the transmission phase of one session.
//
// One goroutine at a time holds the reader role: it reads requests and
// runs the small reads and writes itself, since handing each to another
// goroutine costs more than the work on a fast backend. Anything else, and
// everything after an inline request proved slow, goes to workers that
// outlive their request. An inline request that stalls is caught by the
// server's stall watch, which gives the reader role to a new goroutine, so
// a slow request never holds up the ones behind it for long.
type transmission struct {
	*session
	log   *slog.Logger
	trace bool
	mem   *Mem // the backend, when it is plain memory: large writes go into it directly

	wmu     sync.Mutex
	waiting atomic.Int32 // replies waiting for wmu
	werr    error        // first write error, under wmu

	inflight sync.WaitGroup
	work     chan work           // to idle workers
	active   atomic.Int32        // requests dispatched and not yet answered
	kick     chan struct{}       // wakes the flusher
	budget   *semaphore.Weighted // bounds the requests and bytes in flight
	dirty    atomic.Bool

	// The reader role.
	readerBusy atomic.Bool   // the reader flushes before it next blocks
	readerDone chan error    // why reading ended
	inline     atomic.Uint64 // inline requests run, times two; odd while one runs
	noInline   int           // requests still to hand to workers (reader's)
	slowRun    int           // inline requests in a row that were slow (reader's)
	start      time.Time     // session start; inline timing reads the monotonic clock from it

	requests, bytesIn, bytesOut atomic.Int64
}

func newTransmission(s *session, log *slog.Logger) *transmission {
	mem, _ := s.export.Backend.(*Mem)
	return &transmission{session: s, log: log, trace: log.Enabled(context.Background(), slog.LevelDebug), mem: mem,
		work: make(chan work), budget: semaphore.NewWeighted(maxInflightBytes), kick: make(chan struct{}, 1),
		readerDone: make(chan error, 1), start: time.Now()}
}

func (t *transmission) run() error {
	e := t.export
	t.log.Info("client connected", "export", e.Name, "size", e.Backend.Size(),
		"flags", e.flags(t.structured).String(), "structured_replies", t.structured,
		"base_allocation", t.metaAlloc, "tls", t.tls)
	go t.flusher()
	t.srv.stalls.add(t)
	t.read()
	err := <-t.readerDone
	t.srv.stalls.remove(t)
	t.inflight.Wait()
	close(t.work)
	close(t.kick)
	t.wmu.Lock()
	t.flushLocked()
	t.wmu.Unlock()
	if t.dirty.Load() {
		if serr := e.Backend.Sync(); serr != nil {
			t.log.Error("flush after disconnect failed", "export", e.Name, "err", serr)
		}
	}
	attrs := []any{"export", e.Name, "requests", t.requests.Load(), "read_bytes", t.bytesOut.Load(),
		"written_bytes", t.bytesIn.Load(), "duration", time.Since(t.start).Round(time.Millisecond)}
	if err != nil {
		t.log.Warn("session ended with an error", append(attrs, "err", err)...)
		return err
	}
	t.log.Info("client disconnected", attrs...)
	return nil
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
		}
		if _, err := io.ReadFull(t.br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
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
		if r.cmd == CmdDisc {
			t.traceReq(r, 0, 0)
			return nil
		}
		errno := t.check(r)
		var payload []byte
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
			if errno == 0 && t.mem != nil && r.length > inlineMax {
				if err := t.receive(r); err != nil {
					return err
				}
				continue
			}
			payload = t.srv.bufs.get(int(r.length))
			if err := t.readPayload(payload); err != nil {
				t.srv.bufs.put(payload)
				return fmt.Errorf("read %d-byte write payload: %w", r.length, err)
			}
			t.bytesIn.Add(int64(r.length))
		}
		if errno != 0 {
			t.srv.bufs.put(payload)
			t.traceReq(r, errno, 0)
			t.send(func(w *replyWriter) { t.writeError(w, r, errno, "") })
			continue
		}
		if t.inlinable(r) {
			if !t.runInline(r, payload) {
				return errHandedOff
			}
			continue
		}
		t.dispatch(work{r, payload})
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

// readPayload reads a write's payload of len(p) bytes.
func (t *transmission) readPayload(p []byte) error {
	return t.payload(len(p)).fill(p)
}

// payloadReader reads a write's payload, in one piece or several.
type payloadReader struct {
	t    *transmission
	left int // bytes of the payload not read yet
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
	spin := time.Duration(0)
	if spinCPUs && t.active.Load() == 0 {
		spin = payloadSpin
	}
	for n < len(p) {
		m, err := sr.ReadSpin(p[n:], spin)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
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
	running := t.inline.Add(1)
	t.srv.stalls.touch()
	start := time.Since(t.start) // monotonic clock only: one clock read
	t.handle(r, payload)
	if !t.inline.CompareAndSwap(running, running+1) {
		// The stall watch took the reader role and counted this
		// request in flight.
		t.inflight.Done()
		return false
	}
	if time.Since(t.start)-start <= slowAfter(r.length) {
		t.slowRun = 0
	} else if t.slowRun++; t.slowRun == inlineSlowRun {
		t.slowRun = 0
		t.noInline = inlineBackoff
	}
	return true
}

// takeOver is the stall watch's move when the inline request that was
// running at its last tick still runs: if it wins the race against the
// request's end, a new goroutine becomes the reader.
func (t *transmission) takeOver(running uint64) bool {
	if running&1 == 0 || !t.inline.CompareAndSwap(running, running+1) {
		return false
	}
	t.inflight.Add(1) // the stalled request, until its old reader is done
	t.log.Debug("inline request stalled; reading on in a new goroutine")
	go func() {
		t.noInline = inlineBackoff
		t.read()
	}()
	return true
}

// Limits on what one connection may have in flight: requests weigh their
// length, at least minWeight, against a budget of maxInflightBytes. A client
// that sends more waits until replies drain.
const (
	maxInflightBytes = 256 << 20
	minWeight        = 256 << 10
)

type work struct {
	r       request
	payload []byte
}

func weight(r request) int64 { return min(max(int64(r.length), minWeight), maxInflightBytes) }

// dispatch hands w to an idle worker, or starts a new one, so a slow
// request never waits for another. Workers outlive their request, which
// keeps their grown stacks and spares a goroutine start per request.
func (t *transmission) dispatch(w work) {
	if !t.budget.TryAcquire(weight(w.r)) {
		t.readerIdle() // the replies may be what the client waits for
		t.budget.Acquire(context.Background(), weight(w.r))
	}
	t.inflight.Add(1)
	t.active.Add(1)
	select {
	case t.work <- w:
	default:
		go t.worker(w)
	}
}

func (t *transmission) worker(w work) {
	for ok := true; ok; w, ok = <-t.work {
		t.handle(w.r, w.payload)
		t.budget.Release(weight(w.r))
		t.active.Add(-1)
		t.inflight.Done()
	}
}

func (t *transmission) traceReq(r request, errno Errno, took time.Duration) {
	if t.trace {
		t.log.Debug("request", "cmd", r.cmd.String(), "flags", r.flags.String(), "offset", r.off,
			"length", r.length, "cookie", r.cookie, "errno", errno.String(), "took", took)
	}
}

// clock is the time now, when requests are traced; since is the time
// since a clock reading.
func (t *transmission) clock() time.Time {
	if !t.trace {
		return time.Time{}
	}
	return time.Now()
}

func (t *transmission) since(start time.Time) time.Duration {
	if !t.trace {
		return 0
	}
	return time.Since(start)
}

// handle executes one valid request and sends its reply.
func (t *transmission) handle(r request, payload []byte) {
	start := t.clock()
	var errno Errno
	defer func() {
		if p := recover(); p != nil {
			t.log.Error("request crashed", "cmd", r.cmd.String(), "panic", p, "stack", string(debug.Stack()))
			t.send(func(w *replyWriter) { t.writeError(w, r, EIO, "internal error") })
		}
	}()
	b := t.export.Backend
	off, n := int64(r.off), int64(r.length)
	var err error
	switch r.cmd {
	case CmdRead:
		if err = t.answerRead(r); err == nil {
			t.bytesOut.Add(n)
			t.traceReq(r, 0, t.since(start))
			return
		}
	case CmdWrite:
		if r.flags&CmdFlagFUA != 0 {
			if fw, ok := b.(FUAWriter); ok {
				_, err = fw.WriteAtFUA(payload, off)
			} else if _, err = b.WriteAt(payload, off); err == nil {
				err = b.Sync()
			}
		} else {
			_, err = b.WriteAt(payload, off)
			t.dirty.Store(true)
		}
		t.srv.bufs.put(payload)
	case CmdFlush:
		err = b.Sync()
	case CmdTrim:
		if tr, ok := b.(Trimmer); ok {
			err = tr.Trim(off, n)
		}
		err = t.fua(r, err)
	case CmdWriteZeroes:
		flags := ZeroFlags{NoHole: r.flags&CmdFlagNoHole != 0, Fast: r.flags&CmdFlagFastZero != 0}
		if z, ok := b.(Zeroer); ok {
			err = z.Zero(off, n, flags)
		} else if flags.Fast {
			err = ENOTSUP
		} else {
			err = writeZeroes(b, off, n)
		}
		err = t.fua(r, err)
	case CmdCache:
		if c, ok := b.(Cacher); ok {
			err = c.Cache(off, n)
		}
	case CmdBlockStatus:
		var ext []Extent
		if ext, err = extentsOf(b, off, n); err == nil {
			ext = clipExtents(ext, n, r.flags&CmdFlagReqOne != 0)
			t.send(func(w *replyWriter) { t.writeBlockStatus(w, r, ext) })
			t.traceReq(r, 0, t.since(start))
			return
		}
	}
	if err != nil {
		errno = errnoOf(err)
		if errno == EIO {
			t.log.Error("backend error", "cmd", r.cmd.String(), "offset", r.off, "length", r.length, "err", err)
		}
		t.send(func(w *replyWriter) { t.writeError(w, r, errno, "") })
	} else {
		t.send(func(w *replyWriter) { t.writeDone(w, r) })
	}
	t.traceReq(r, errno, t.since(start))
}

// answerRead sends the data of a read, spliced from the backend where it
// can be, copied through a buffer otherwise. On error nothing was sent.
func (t *transmission) answerRead(r request) error {
	if spliced, err := t.spliceRead(r); spliced {
		return err
	}
	buf := t.srv.bufs.get(int(r.length))
	defer t.srv.bufs.put(buf)
	if _, err := t.export.Backend.ReadAt(buf, int64(r.off)); err != nil {
		return err
	}
	t.send(func(w *replyWriter) { t.writeRead(w, r, buf) })
	return nil
}

// fua completes a write-like command that carries NBD_CMD_FLAG_FUA.
func (t *transmission) fua(r request, err error) error {
	if err != nil {
		return err
	}
	if r.flags&CmdFlagFUA != 0 {
		return t.export.Backend.Sync()
	}
	t.dirty.Store(true)
	return nil
}

// clipExtents trims a backend's answer to the request: at most n bytes, at
// most maxExtents descriptors, one if reqOne, none of zero length.
func clipExtents(ext []Extent, n int64, reqOne bool) []Extent {
	out := ext[:0]
	var total int64
	for _, e := range ext {
		if total >= n || len(out) == maxExtents || (reqOne && len(out) == 1) {
			break
		}
		e.Length = min(e.Length, n-total)
		if e.Length <= 0 {
			continue
		}
		out = append(out, e)
		total += e.Length
	}
	if len(out) == 0 { // a backend that said nothing: call it data
		out = append(out, Extent{Length: n})
	}
	return out
}

// send writes one reply under the connection's write lock and decides who
// sends it on: replies that complete together should leave in one system
// call, but none may wait long.
//
//   - another reply is waiting for the lock: its writer decides;
//   - the reader is busy: it flushes before it next blocks;
//   - other requests are still running: the flusher goroutine flushes
//     after one yield, so that the replies completing meanwhile join;
//   - otherwise this is the last reply in flight and goes at once.
func (t *transmission) send(fn func(w *replyWriter)) {
	t.lockWriter()
	if t.werr == nil {
		fn(t.bw)
		switch {
		case t.waiting.Load() > 0:
		case t.readerBusy.Load():
		case t.active.Load() > 1:
			select {
			case t.kick <- struct{}{}:
			default:
			}
		default:
			t.flushLocked()
		}
	}
	t.wmu.Unlock()
}

// sendNow writes one reply under the write lock with fn, which sends it
// and everything buffered before it; an error ends the session.
func (t *transmission) sendNow(fn func(w *replyWriter) error) {
	t.lockWriter()
	if t.werr == nil {
		t.writeFailed(fn(t.bw))
	}
	t.wmu.Unlock()
}

// lockWriter takes the write lock, counted in waiting while it waits.
func (t *transmission) lockWriter() {
	t.waiting.Add(1)
	t.wmu.Lock()
	t.waiting.Add(-1)
}

// writeFailed records the result of a write under wmu. An error ends the
// session: closing the connection stops the reader.
func (t *transmission) writeFailed(err error) {
	if t.werr = err; err != nil && t.conn != nil {
		t.conn.Close()
	}
}

// flushLocked sends the buffered replies, if any and if the connection
// still works; wmu is held.
func (t *transmission) flushLocked() {
	if t.werr != nil || t.bw.Buffered() == 0 {
		return
	}
	t.writeFailed(t.bw.Flush())
}

// flusher flushes replies that send left buffered.
func (t *transmission) flusher() {
	for range t.kick {
		runtime.Gosched()
		t.wmu.Lock()
		t.flushLocked()
		t.wmu.Unlock()
	}
}

func (t *transmission) writeSimple(w *replyWriter, r request, errno Errno) {
	var h [simpleReplyLen]byte
	binary.BigEndian.PutUint32(h[0:], MagicSimpleReply)
	binary.BigEndian.PutUint32(h[4:], uint32(errno))
	binary.BigEndian.PutUint64(h[8:], r.cookie)
	w.Write(h[:])
}

func (t *transmission) writeChunk(w *replyWriter, r request, flags uint16, typ ChunkType, length int) {
	var h [structuredHeaderLen]byte
	binary.BigEndian.PutUint32(h[0:], MagicStructuredReply)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], uint16(typ))
	binary.BigEndian.PutUint64(h[8:], r.cookie)
	binary.BigEndian.PutUint32(h[16:], uint32(length))
	w.Write(h[:])
}

// writeDone answers a successful request that returns no data. The
// simple reply serves with structured replies too (the specification
// allows it for every command but NBD_CMD_READ), and it is the shorter:
// clients such as libnbd read a structured chunk header in two parts.
func (t *transmission) writeDone(w *replyWriter, r request) {
	t.writeSimple(w, r, 0)
}

func (t *transmission) writeError(w *replyWriter, r request, errno Errno, msg string) {
	if !t.structured {
		t.writeSimple(w, r, errno)
		return
	}
	t.writeChunk(w, r, ReplyFlagDone, ReplyTypeError, 6+len(msg))
	var b [6]byte
	binary.BigEndian.PutUint32(b[0:], uint32(errno))
	binary.BigEndian.PutUint16(b[4:], uint16(len(msg)))
	w.Write(b[:])
	w.WriteString(msg)
}

func (t *transmission) writeRead(w *replyWriter, r request, data []byte) {
	t.writeReadHeader(w, r, len(data))
	w.Write(data)
}

// writeReadHeader writes what goes before n bytes of read data.
func (t *transmission) writeReadHeader(w *replyWriter, r request, n int) {
	if !t.structured {
		t.writeSimple(w, r, 0)
		return
	}
	t.writeChunk(w, r, ReplyFlagDone, ReplyTypeOffsetData, 8+n)
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], r.off)
	w.Write(b[:])
}

func (t *transmission) writeBlockStatus(w *replyWriter, r request, ext []Extent) {
	t.writeChunk(w, r, ReplyFlagDone, ReplyTypeBlockStatus, 4+8*len(ext))
	var b [8]byte
	binary.BigEndian.PutUint32(b[:4], metaContextID)
	w.Write(b[:4])
	for _, e := range ext {
		binary.BigEndian.PutUint32(b[0:], uint32(e.Length))
		binary.BigEndian.PutUint32(b[4:], e.Flags)
		w.Write(b[:])
	}
}
