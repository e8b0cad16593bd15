package nbd

import (
	"errors"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
)

// allowedFlags lists the flags each command accepts. Every export
// advertises NBD_FLAG_SEND_FUA, and the specification then has the server
// accept NBD_CMD_FLAG_FUA on every command: it means something only on
// writes, and is ignored on the rest.
var allowedFlags = map[Cmd]CmdFlags{
	CmdRead:        CmdFlagFUA | CmdFlagDF,
	CmdWrite:       CmdFlagFUA,
	CmdDisc:        CmdFlagFUA,
	CmdFlush:       CmdFlagFUA,
	CmdTrim:        CmdFlagFUA,
	CmdCache:       CmdFlagFUA,
	CmdWriteZeroes: CmdFlagFUA | CmdFlagNoHole | CmdFlagFastZero,
	CmdBlockStatus: CmdFlagFUA | CmdFlagReqOne,
}

// validate checks a request against the export and the session, in the
// order the specification implies: malformed, forbidden, out of range.
func (t *transmission) validate(r request) Errno {
	allowed, known := allowedFlags[r.cmd]
	if !t.structured {
		allowed &^= CmdFlagDF
	}
	if !known || r.flags&^allowed != 0 {
		return EINVAL
	}
	e := t.export
	switch r.cmd {
	case CmdWrite, CmdTrim, CmdWriteZeroes:
		if e.ReadOnly {
			return EPERM
		}
	case CmdBlockStatus:
		if !t.metaAlloc || r.length == 0 {
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

// What requests in flight may hold: each weighs its length, at least
// minWeight, against its connection's budget and the server's
// (Server.MaxInflight; a connection gets a quarter of it). A client that
// sends more waits until replies drain; so, when the server's budget is
// spent, do the others.
const minWeight = 256 << 10

// budget is the server's bound on bytes in flight, made on first use.
type budget struct {
	once sync.Once
	sem  *semaphore.Weighted
	per  int64 // a connection's share
}

// get returns the server's semaphore (nil for no limit) and a
// connection's share of it.
func (b *budget) get(max int64) (*semaphore.Weighted, int64) {
	b.once.Do(func() {
		b.per = MaxPayload * 8
		if max > 0 {
			b.sem = semaphore.NewWeighted(max)
			b.per = max / 4
		}
	})
	return b.sem, b.per
}

type work struct {
	r        request
	payload  []byte
	reserved bool // its weight is taken already
}

func (t *transmission) weight(r request) int64 { return min(max(int64(r.length), minWeight), t.share) }

// reserve takes r's weight from the connection's budget and the
// server's, waiting for it if it must. The reader sends the replies it
// holds first: they may be what the client waits for. It reports false,
// having taken nothing, when the session broke meanwhile.
func (t *transmission) reserve(r request) bool {
	w := t.weight(r)
	if !t.budget.TryAcquire(w) {
		t.readerIdle()
		if t.budget.Acquire(t.ctx, w) != nil {
			return false
		}
	}
	if t.shared != nil && !t.shared.TryAcquire(w) {
		t.readerIdle()
		if t.shared.Acquire(t.ctx, w) != nil {
			t.budget.Release(w)
			return false
		}
	}
	return true
}

func (t *transmission) unreserve(r request) {
	w := t.weight(r)
	t.budget.Release(w)
	if t.shared != nil {
		t.shared.Release(w)
	}
}

// dispatch hands w to an idle worker, or starts a new one, so a slow
// request never waits for another. Workers outlive their request, which
// keeps their grown stacks and spares a goroutine start per request.
func (t *transmission) dispatch(w work) error {
	if !w.reserved && !t.reserve(w.r) {
		t.srv.bufs.put(w.payload)
		return errBroken
	}
	t.inflight.Add(1)
	t.active.Add(1)
	select {
	case t.work <- w:
	default:
		go t.worker(w)
	}
	return nil
}

// errBroken ends the reading of a session no reply can reach.
var errBroken = errors.New("nbd: replies cannot reach the client")

func (t *transmission) worker(w work) {
	for ok := true; ok; w, ok = <-t.work {
		t.handle(w.r, w.payload)
		t.unreserve(w.r)
		if t.active.Add(-1) == 0 && t.idle > 0 && t.conn != nil {
			t.conn.SetReadDeadline(time.Now().Add(t.idle))
		}
		t.inflight.Done()
	}
}

// handle executes one valid request and sends its reply.
func (t *transmission) handle(r request, payload []byte) {
	if t.ctx.Err() != nil {
		t.srv.bufs.put(payload) // no reply can reach the client: skip the work
		return
	}
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
