package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// transmission is one session's transmission phase. It is served by a
// few identical workers, each of which loops through the same steps:
// take the read side, read one request and its payload (reader.go), hand
// the read side to the next worker, run the request against the backend
// (dispatch.go) and send its reply under the write lock (reply.go).
//
// A worker that reads a request while no other worker waits for the read
// side starts one, up to the session's limit, so that a slow request
// never holds up the ones behind it; a worker that finishes while another
// already waits to read ends. An idle session has one worker, blocked in
// the runtime's poller, which holds no thread.
type transmission struct {
	// What the handshake settled; fixed for the session.
	srv        *Server
	export     *Export
	mem        *Mem       // the backend, when it is plain memory: large writes go into it directly
	conn       net.Conn   // nil when serving a plain stream (fuzzing)
	rw         *rawWriter // the replies' raw writer (rawio_linux.go), which sets its own write deadlines; nil elsewhere
	structured bool
	metaAlloc  bool
	tls        bool
	log        *slog.Logger
	trace      bool
	idle       time.Duration // Server.IdleTimeout; 0 for none
	maxPayload uint32
	inline     bool // the backend is memory: small reads and writes, and flushes, run where they are read (runsInline)
	start      time.Time

	// The read side: one worker at a time holds rmu and reads.
	rmu      *parkLock
	br       *bufio.Reader // under rmu
	readDone bool          // under rmu: no more requests will be read
	readErr  error         // under rmu: why reading ended
	idleMu   sync.Mutex    // orders the idle deadline's settings
	draining bool          // under idleMu: stopReading was called

	// The workers.
	workers    sync.WaitGroup
	alive      atomic.Int32 // workers running
	readers    atomic.Int32 // workers waiting for the read side
	maxWorkers int32

	// The write side (reply.go).
	wmu     *parkLock
	bw      *replyWriter // under wmu
	werr    error        // first write error, under wmu
	wdl     time.Time    // the write deadline set last, under wmu
	wtime   time.Duration
	waiting atomic.Int32 // replies waiting for wmu
	holding atomic.Bool  // the reader has requests in hand and will send the held replies before it blocks (unhold)

	// ctx ends when the session breaks (no reply can reach the client,
	// or a worker crashed): requests not yet run are dropped.
	ctx    context.Context
	broken context.CancelFunc

	active atomic.Int32        // requests read and not yet answered
	budget *semaphore.Weighted // bounds the connection's bytes in flight
	shared *semaphore.Weighted // the server's budget; nil for none
	// sharedHeld is what this session holds of shared: given back by
	// unreserve, and whatever a crash left held, at the session's end.
	sharedHeld atomic.Int64
	share      int64       // the connection's budget, and the heaviest weight
	dirty      atomic.Bool // written since the last Sync

	requests, bytesIn, bytesOut atomic.Int64
	errs                        errorLog // the backend's errors, counted and logged
	id                          uint64   // for Server.Record
}

func newTransmission(s *session, log *slog.Logger) *transmission {
	mem, _ := s.export.Backend.(*Mem)
	shared, share := s.srv.budget.get(limit(s.srv.MaxInflight, DefaultMaxInflight))
	ctx, broken := context.WithCancel(context.Background())
	t := &transmission{
		ctx: ctx, broken: broken, rmu: newParkLock(), wmu: newParkLock(),
		shared: shared, share: share, idle: max(s.srv.IdleTimeout, 0),
		srv: s.srv, export: s.export, mem: mem, conn: s.conn, br: s.br,
		structured: s.structured, metaAlloc: s.metaAlloc, tls: s.tls,
		log: log, trace: log.Enabled(context.Background(), slog.LevelDebug), start: time.Now(),
		bw: s.bw, wtime: limit(s.srv.WriteTimeout, DefaultWriteTimeout),
		budget:     semaphore.NewWeighted(share),
		maxWorkers: int32(max(limit(s.srv.Workers, DefaultWorkers), 1)),
		id:         s.srv.connIDs.Add(1),
		maxPayload: s.srv.maxPayload(),
	}
	// Reads and writes of memory never wait for a device: a copy, done
	// where the request was read faster than another worker could be
	// woken for it. Only the backends themselves: a wrapper (cow, eio, a
	// test's) may wait.
	switch b := s.export.Backend.(type) {
	case *Mem:
		t.inline = true
	case *File:
		t.inline = b.inMemory()
	}
	if !s.tls {
		t.useRawIO(s.in)
	}
	return t
}

// run serves requests until the client disconnects, then waits for the
// requests in flight, sends their replies and flushes the export if it
// was written to.
func (t *transmission) run() error {
	e := t.export
	t.log.Info("client connected", "export", e.Name, "size", e.Backend.Size(),
		"flags", e.flags(t.structured).String(), "structured_replies", t.structured,
		"base_allocation", t.metaAlloc, "tls", t.tls)
	defer t.releaseShared()
	t.spawn()
	t.workers.Wait()
	// Every worker has ended: reading has, and every request read has
	// been answered.
	t.broken()
	t.wmu.Lock()
	t.flushLocked()
	err := t.readErr
	if err == nil && t.werr != nil && !errors.Is(t.werr, net.ErrClosed) {
		err = fmt.Errorf("send replies: %w", t.werr) // why reading stopped
	}
	t.wmu.Unlock()
	if t.dirty.Load() {
		if serr := e.Backend.Sync(); serr != nil {
			t.log.Error("flush after disconnect failed", "export", e.Name, "err", serr)
		}
	}
	attrs := []any{"export", e.Name, "requests", t.requests.Load(), "read_bytes", t.bytesOut.Load(),
		"written_bytes", t.bytesIn.Load(), "duration", time.Since(t.start).Round(time.Millisecond)}
	level := slog.LevelInfo
	if s := t.errs.summary(); s != "" {
		attrs, level = append(attrs, "errors", s), slog.LevelWarn
	}
	if err != nil {
		t.log.Warn("session ended with an error", append(attrs, "err", err)...)
		return err
	}
	t.log.Log(context.Background(), level, "client disconnected", attrs...)
	return nil
}

// spawn starts a worker.
func (t *transmission) spawn() {
	t.alive.Add(1)
	t.workers.Add(1)
	go t.worker()
}

// worker reads requests and runs them until reading ends. A panic that
// escapes a request (the backend's are caught per request) ends the
// session, never the process.
func (t *transmission) worker() {
	defer t.workers.Done()
	defer func() {
		if p := recover(); p != nil {
			t.log.Error("session crashed; other sessions are unaffected", "panic", p, "stack", string(debug.Stack()))
			t.abort(fmt.Errorf("nbd: panic serving the session: %v", p))
		}
	}()
	for counted := false; ; {
		w, ok := t.next(counted)
		if !ok {
			t.alive.Add(-1)
			return
		}
		var a answer
		run := t.ctx.Err() == nil
		if run { // else no reply can reach the client: skip the work
			a = t.handle(w.r, w.payload)
		}
		t.srv.bufs.put(w.payload)
		// Stay unless another worker already waits to read; one that
		// stays counts itself a reader before it replies, so that the
		// client's next request, sent the moment the reply arrives,
		// starts no new worker.
		counted = t.readers.Load() == 0 || t.alive.Load() == 1
		if counted {
			t.readers.Add(1)
		}
		if run {
			t.reply(w.r, a)
		}
		t.finish(w.r)
		if !counted {
			t.alive.Add(-1)
			return
		}
	}
}

// abort ends the session at once: nothing more is read or run.
func (t *transmission) abort(err error) {
	t.broken()
	t.wmu.Lock()
	if t.werr == nil {
		t.werr = err
	}
	t.wmu.Unlock()
	if t.conn != nil {
		t.conn.Close()
	}
	t.alive.Add(-1)
}

// record hands a request just read to Server.Record.
func (t *transmission) record(r request) {
	if rec := t.srv.Record; rec != nil {
		f := ""
		if r.flags != 0 {
			f = r.flags.String()
		}
		rec(Recorded{Conn: t.id, Export: t.export.Name, Cmd: r.cmd.String(), Flags: f, Offset: r.off, Length: r.length})
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
