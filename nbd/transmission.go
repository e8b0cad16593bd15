package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// transmission runs the transmission phase of one session. A request's
// path through it: the reader role reads it (reader.go), validation and
// the backend answer it (dispatch.go), and the reply goes out under the
// connection's write lock (reply.go).
//
// One goroutine at a time holds the reader role: it reads requests and
// runs the small reads and writes itself, since handing each to another
// goroutine costs more than the work on a fast backend. Anything else, and
// everything after inline requests proved slow, goes to workers that
// outlive their request. An inline request that stalls is caught by the
// server's stall watch, which gives the reader role to a new goroutine, so
// a slow request never holds up the ones behind it for long.
type transmission struct {
	// What the handshake settled; fixed for the session.
	srv        *Server
	export     *Export
	mem        *Mem     // the backend, when it is plain memory: large writes go into it directly
	conn       net.Conn // nil when serving a plain stream (fuzzing)
	in         *connReader
	br         *bufio.Reader
	structured bool
	metaAlloc  bool
	tls        bool
	log        *slog.Logger
	trace      bool
	idle       time.Duration // Server.IdleTimeout; 0 for none
	start      time.Time     // session start; inline timing reads the monotonic clock from it

	// The reply side (reply.go).
	wmu     sync.Mutex
	bw      *replyWriter // under wmu
	werr    error        // first write error, under wmu
	waiting atomic.Int32 // replies waiting for wmu
	kick    chan struct{}

	// ctx ends when no reply can reach the client any more: requests
	// waiting for their turn or their budget are dropped.
	ctx    context.Context
	broken context.CancelFunc

	// Requests in flight (dispatch.go).
	inflight sync.WaitGroup
	work     chan work           // to idle workers
	active   atomic.Int32        // requests dispatched and not yet answered
	budget   *semaphore.Weighted // bounds the connection's bytes in flight
	shared   *semaphore.Weighted // the server's budget; nil for none
	share    int64               // the connection's budget, and the heaviest weight
	dirty    atomic.Bool         // written since the last Sync

	// The reader role (reader.go).
	readerBusy atomic.Bool // the reader flushes before it next blocks
	readerDone chan error  // why reading ended
	inline     inlineGate
	noInline   int // requests still to hand to workers (reader's)
	slowRun    int // inline requests in a row that were slow (reader's)
	// behind: the read buffer held more requests when the inline request
	// began (for the stall watch, which must not touch the buffer).
	behind     atomic.Bool
	afterSteal func() // tests: runs right after the stall watch steals the role

	requests, bytesIn, bytesOut atomic.Int64
	id                          uint64 // for Server.Record
}

func newTransmission(s *session, log *slog.Logger) *transmission {
	mem, _ := s.export.Backend.(*Mem)
	shared, share := s.srv.budget.get(limit(s.srv.MaxInflight, DefaultMaxInflight))
	ctx, broken := context.WithCancel(context.Background())
	return &transmission{
		ctx: ctx, broken: broken,
		shared: shared, share: share, idle: max(s.srv.IdleTimeout, 0),
		srv: s.srv, export: s.export, mem: mem, conn: s.conn, in: s.in, br: s.br,
		structured: s.structured, metaAlloc: s.metaAlloc, tls: s.tls,
		log: log, trace: log.Enabled(context.Background(), slog.LevelDebug), start: time.Now(),
		bw: s.bw, kick: make(chan struct{}, 1),
		work: make(chan work), budget: semaphore.NewWeighted(share),
		readerDone: make(chan error, 1),
		id:         s.srv.connIDs.Add(1),
	}
}

// run serves requests until the client disconnects, then waits for the
// requests in flight, sends their replies and flushes the export if it
// was written to.
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
	t.broken()
	close(t.work)
	close(t.kick)
	t.wmu.Lock()
	t.flushLocked()
	if err == errBroken {
		err = nil
	}
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
	if err != nil {
		t.log.Warn("session ended with an error", append(attrs, "err", err)...)
		return err
	}
	t.log.Info("client disconnected", attrs...)
	return nil
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
