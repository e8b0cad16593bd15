package nbd

import (
	"fmt"
	"runtime/debug"
	"sync"

	"golang.org/x/sync/semaphore"
)

// allowedFlags lists the flags each command accepts, indexed by command;
// a command past its end is unknown. Every export advertises
// NBD_FLAG_SEND_FUA, and the specification then has the server accept
// NBD_CMD_FLAG_FUA on every command: it means something only on writes,
// and is ignored on the rest. An array, not a map: it is read for every
// request.
var allowedFlags = [...]CmdFlags{
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
	if int(r.cmd) >= len(allowedFlags) {
		return EINVAL
	}
	allowed := allowedFlags[r.cmd]
	if !t.structured {
		allowed &^= CmdFlagDF
	}
	if r.flags&^allowed != 0 {
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
		if r.length > t.maxPayload {
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

// weight is what r weighs against the budgets while in flight. A request
// run in place (inPlace) weighs nothing and takes no part in either: it
// holds no worker, and no memory that the connection does not hold
// anyway, whatever it asks. (A read of memory from largeWrite to
// inlineMax still weighs: its data has a buffer of its own while it is
// sent.)
func (t *transmission) weight(r request) int64 {
	if t.inPlace(r) {
		return 0
	}
	return min(max(int64(r.length), minWeight), t.share)
}

// reserve takes r's weight from the connection's budget and the
// server's, waiting for it if it must. It reports false, having taken
// nothing, when the session broke meanwhile.
func (t *transmission) reserve(r request) bool {
	w := t.weight(r)
	if w == 0 {
		return true
	}
	if !t.budget.TryAcquire(w) {
		t.unhold() // about to wait: what is held goes out first
		if t.budget.Acquire(t.ctx, w) != nil {
			return false
		}
	}
	if t.shared != nil && !t.shared.TryAcquire(w) {
		t.unhold()
		if t.shared.Acquire(t.ctx, w) != nil {
			t.budget.Release(w)
			return false
		}
	}
	if t.shared != nil {
		t.sharedHeld.Add(w)
	}
	return true
}

func (t *transmission) unreserve(r request) {
	w := t.weight(r)
	if w == 0 {
		return
	}
	t.budget.Release(w)
	if t.shared != nil {
		t.sharedHeld.Add(-w)
		t.shared.Release(w)
	}
}

// releaseShared gives the server's budget back what the session still
// holds of it when it ends: nothing, unless a panic cut a request short
// between reserve and unreserve (a crash in a user's slog.Handler while
// tracing it, say). The connection's own budget dies with the session;
// the server's would have shrunk for good, until every session waited.
func (t *transmission) releaseShared() {
	if n := t.sharedHeld.Swap(0); n > 0 && t.shared != nil {
		t.shared.Release(n)
	}
}

// panicError is a backend's panic, caught by safely: the request fails
// with EIO and the session goes on.
type panicError struct{ p any }

func (e panicError) Error() string { return fmt.Sprintf("backend panicked: %v", e.p) }

// safely calls fn, turning a panic into an error.
func (t *transmission) safely(r request, fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			t.log.Error("request crashed", "cmd", r.cmd.String(), "panic", p, "stack", string(debug.Stack()))
			err = panicError{p}
		}
	}()
	return fn()
}

// answer is how a request that ran is answered: with its error, or with
// what it returns. A value, not a function: a closure per request was an
// allocation per request.
type answer struct {
	errno   Errno
	data    []byte   // a read's data, from Server.bufs: put back once sent
	inPlace bool     // a read of memory, made as its reply is written (readInto)
	ext     []Extent // a block status's extents
	send    func()   // for a reply that goes its own way (a spliced read): sends it
}

// handle runs one valid request against the backend and returns its
// answer; the worker sends it (reply) once it is ready to read again. A
// write's payload stays the caller's.
func (t *transmission) handle(r request, payload []byte) answer {
	start := t.clock()
	b := t.export.Backend
	off, n := int64(r.off), int64(r.length)
	var a answer
	var err error
	switch r.cmd {
	case CmdRead:
		if t.inPlace(r) {
			// Small enough to be copied into the reply buffer anyway (a
			// larger read goes out from its own buffer by writev): read
			// as the reply is written.
			return answer{inPlace: true}
		}
		if a, err = t.answerRead(r); err == nil {
			t.bytesOut.Add(n)
		}
	case CmdWrite:
		err = t.safely(r, func() error {
			if r.flags&CmdFlagFUA == 0 {
				t.dirty.Store(true)
				_, err := b.WriteAt(payload, off)
				return err
			}
			if fw, ok := b.(FUAWriter); ok {
				_, err := fw.WriteAtFUA(payload, off)
				return err
			}
			if _, err := b.WriteAt(payload, off); err != nil {
				return err
			}
			return b.Sync()
		})
	case CmdFlush:
		err = t.safely(r, b.Sync)
	case CmdTrim:
		err = t.safely(r, func() error {
			if tr, ok := b.(Trimmer); ok {
				return t.fua(r, tr.Trim(off, n))
			}
			return nil
		})
	case CmdWriteZeroes:
		flags := ZeroFlags{NoHole: r.flags&CmdFlagNoHole != 0, Fast: r.flags&CmdFlagFastZero != 0}
		err = t.safely(r, func() error {
			if z, ok := b.(Zeroer); ok {
				return t.fua(r, z.Zero(off, n, flags))
			} else if flags.Fast {
				return ENOTSUP
			}
			return t.fua(r, writeZeroes(b, off, n))
		})
	case CmdCache:
		err = t.safely(r, func() error {
			if c, ok := b.(Cacher); ok {
				return c.Cache(off, n)
			}
			return nil
		})
	case CmdBlockStatus:
		err = t.safely(r, func() (err error) { a.ext, err = extentsOf(b, off, n); return err })
		if err == nil {
			a.ext = clipExtents(a.ext, n, r.flags&CmdFlagReqOne != 0)
		}
	}
	if err != nil {
		a = answer{errno: t.failed(r, err)}
	}
	t.traceReq(r, a.errno, t.since(start))
	return a
}

// failed returns the errno that answers a request the backend failed,
// and counts and logs it (errlog.go).
func (t *transmission) failed(r request, err error) Errno {
	errno := errnoOf(err)
	t.errs.record(t.log, t.export.Name, r, errno, err)
	return errno
}

// reply sends a request's answer.
func (t *transmission) reply(r request, a answer) {
	switch {
	case a.send != nil:
		a.send()
	case a.errno != 0:
		t.send(func(w *replyWriter) { t.writeError(w, r, a.errno, "") })
	case a.inPlace:
		t.send(func(w *replyWriter) { t.readInto(w, r) })
	case r.cmd == CmdRead:
		t.send(func(w *replyWriter) { t.writeRead(w, r, a.data) })
		t.srv.bufs.put(a.data)
	case r.cmd == CmdBlockStatus:
		t.send(func(w *replyWriter) { t.writeBlockStatus(w, r, a.ext) })
	default:
		t.send(func(w *replyWriter) { t.writeDone(w, r) })
	}
}

// answerRead reads the data of a read: spliced from the backend where it
// can be, copied through a buffer otherwise.
func (t *transmission) answerRead(r request) (answer, error) {
	if send, spliced, err := t.spliceRead(r); spliced {
		return answer{send: send}, err
	}
	buf := t.srv.bufs.get(int(r.length))
	if err := t.safely(r, func() error { _, err := t.export.Backend.ReadAt(buf, int64(r.off)); return err }); err != nil {
		t.srv.bufs.put(buf)
		return answer{}, err
	}
	return answer{data: buf}, nil
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
