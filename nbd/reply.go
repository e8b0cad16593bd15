package nbd

import (
	"encoding/binary"
	"errors"
	"slices"
	"time"
)

// replyBufferMax bounds the replies a connection keeps buffered.
const replyBufferMax = 256 << 10

// replyHoldMax bounds the replies held back for the ones sure to follow.
// Holding them all until the reader's buffer is empty made the server and
// a pipelining client take turns: fio's nbd engine at QD16 waits for its
// replies while the server reads the 16 requests it sent, and sends more
// only once they all arrive. With 8 at most, 4k random writes to a memory
// export over a unix socket went from 165k to 211-219k IOPS natively
// (nbdkit's memory plugin: 214-225k), to a tmpfs file from 163k to 204k
// (nbdkit's file plugin 206-209k); reads did not change.
const replyHoldMax = 8

// send writes one reply under the connection's write lock. Replies are
// batched only while more are sure to follow without waiting on the
// client: while another reply waits for the lock (its writer sends
// both), and while the reader holds requests it read and has not run,
// before it reads again: it sends what is held before any read that may
// block (unhold). No timing decides either; at most replyHoldMax replies
// or replyBufferMax bytes are held.
func (t *transmission) send(fn func(w *replyWriter)) {
	t.sendNow(func(w *replyWriter) error {
		fn(w)
		if w.err != nil {
			return w.err // a large reply went straight out, and failed
		}
		// A reply left in the buffer is held; a large one went out
		// at once, with whatever was held before it.
		if w.Buffered() > 0 {
			w.held++
		}
		if (t.waiting.Load() > 0 || t.holding.Load()) && w.Buffered() < replyBufferMax && w.held < replyHoldMax {
			return nil // the next writer, or the reader, sends this one too
		}
		return t.flushLocked()
	})
}

// unhold ends the reader's hold on replies: it is about to block (on the
// client, or on the in-flight budget) or to give up the read side, so
// the replies held for it go out now. The hold is taken again once the
// read returns. A sender that saw the hold appended its reply under wmu
// before this takes wmu, so nothing is left behind.
func (t *transmission) unhold() {
	if !t.holding.Swap(false) {
		return
	}
	t.wmu.Lock()
	t.flushLocked()
	t.wmu.Unlock()
}

// sendNow writes one reply under the write lock with fn, which sends what
// it must; an error ends the session. A reply cut short by a panic ends it
// too: what follows could not be framed.
func (t *transmission) sendNow(fn func(w *replyWriter) error) {
	t.waiting.Add(1)
	t.wmu.Lock()
	t.waiting.Add(-1)
	defer t.wmu.Unlock()
	if t.werr != nil {
		return
	}
	done := false
	defer func() {
		if !done {
			t.writeFailed(errors.New("nbd: a reply was cut short by a panic"))
		}
	}()
	t.armWrite()
	err := fn(t.bw)
	done = true
	t.writeFailed(err)
}

// armWrite gives the write about to start a deadline WriteTimeout ahead,
// moved only once a quarter of it has gone by: a client that takes none
// of its replies is dropped within WriteTimeout, and most writes set no
// timer. wmu is held. Raw writes (rawio_linux.go) need none of this: they
// set a deadline only when the socket is full, which costs nothing on the
// way of a write that does not wait.
func (t *transmission) armWrite() {
	if t.wtime <= 0 || t.conn == nil || t.rw != nil {
		return
	}
	now := time.Now()
	if t.wdl.Sub(now) < t.wtime-t.wtime/4 {
		t.wdl = now.Add(t.wtime)
		t.conn.SetWriteDeadline(t.wdl)
	}
}

// writeFailed records the result of a write under wmu. An error ends the
// session: closing the connection stops the reader.
func (t *transmission) writeFailed(err error) {
	if err == nil || t.werr != nil {
		return
	}
	t.werr = err
	t.broken() // no reply can reach the client: stop working for it
	if t.conn != nil {
		t.conn.Close()
	}
}

// flushLocked sends the buffered replies, if any and if the connection
// still works; wmu is held.
func (t *transmission) flushLocked() error {
	if t.werr != nil {
		return nil
	}
	if t.bw.Buffered() == 0 && t.bw.err == nil {
		return nil
	}
	t.armWrite()
	err := t.bw.Flush()
	t.writeFailed(err)
	return err
}

// writeSimple appends a simple reply header.
func (t *transmission) writeSimple(w *replyWriter, r request, errno Errno) {
	w.buf = appendSimpleReply(w.buf, simpleReply{errno: errno, cookie: r.cookie})
}

// writeChunk appends a structured reply chunk header.
func (t *transmission) writeChunk(w *replyWriter, r request, flags uint16, typ ChunkType, length int) {
	w.buf = appendChunkHeader(w.buf, chunkHeader{flags: flags, typ: typ, cookie: r.cookie, length: uint32(length)})
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
	w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(errno))
	w.buf = binary.BigEndian.AppendUint16(w.buf, uint16(len(msg)))
	w.buf = append(w.buf, msg...)
}

func (t *transmission) writeRead(w *replyWriter, r request, data []byte) {
	t.writeReadHeader(w, r, len(data))
	w.Write(data)
}

// readInto answers a read of memory with its data read straight into the
// reply buffer, behind the reply's header, or with the backend's error.
// wmu is held through the read: memory does not wait. (Read into a buffer
// of its own and copied into the reply, a 4k read's data took 460 of the
// 3,450 instructions the read cost in user space, and getting the buffer
// and putting it back 300 more; callgrind, as for parkLock.)
func (t *transmission) readInto(w *replyWriter, r request) {
	start := t.clock()
	mark := len(w.buf)
	t.writeReadHeader(w, r, int(r.length))
	at, n := len(w.buf), int(r.length)
	w.buf = slices.Grow(w.buf, n)[:at+n]
	err := t.safely(r, func() error { _, err := t.export.Backend.ReadAt(w.buf[at:], int64(r.off)); return err })
	if err != nil {
		w.buf = w.buf[:mark]
		errno := t.failed(r, err)
		t.writeError(w, r, errno, "")
		t.traceReq(r, errno, t.since(start))
		return
	}
	t.bytesOut.Add(int64(n))
	t.traceReq(r, 0, t.since(start))
}

// writeReadHeader writes what goes before n bytes of read data.
func (t *transmission) writeReadHeader(w *replyWriter, r request, n int) {
	if !t.structured {
		t.writeSimple(w, r, 0)
		return
	}
	if n == 0 {
		// An OFFSET_DATA chunk must carry data: a read of nothing is
		// answered with a lone NONE chunk.
		t.writeChunk(w, r, ReplyFlagDone, ReplyTypeNone, 0)
		return
	}
	t.writeChunk(w, r, ReplyFlagDone, ReplyTypeOffsetData, 8+n)
	w.buf = binary.BigEndian.AppendUint64(w.buf, r.off)
}

func (t *transmission) writeBlockStatus(w *replyWriter, r request, ext []Extent) {
	t.writeChunk(w, r, ReplyFlagDone, ReplyTypeBlockStatus, 4+8*len(ext))
	w.buf = binary.BigEndian.AppendUint32(w.buf, metaContextID)
	for _, e := range ext {
		w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(e.Length))
		w.buf = binary.BigEndian.AppendUint32(w.buf, e.Flags)
	}
}
