package nbd

import (
	"encoding/binary"
	"runtime"
)

// replyBufferMax bounds the replies a connection keeps buffered.
const replyBufferMax = 256 << 10

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
		case t.bw.err != nil:
			t.writeFailed(t.bw.err) // a large reply went straight out, and failed
		case t.bw.Buffered() >= replyBufferMax:
			// A client that sends and never reads holds the server to
			// this: the next reply waits until these are taken.
			t.flushLocked()
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
	if t.werr = err; err != nil {
		t.broken() // no reply can reach the client: stop working for it
		if t.conn != nil {
			t.conn.Close()
		}
	}
}

// flushLocked sends the buffered replies, if any and if the connection
// still works; wmu is held.
func (t *transmission) flushLocked() {
	if t.werr != nil || (t.bw.Buffered() == 0 && t.bw.err == nil) {
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
