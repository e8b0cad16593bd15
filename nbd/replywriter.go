package nbd

import (
	"io"
	"net"
)

// largeWrite is the size from which a payload is not copied into the
// buffer but sent with the buffered bytes in one vectored write.
const largeWrite = 32 << 10

// replyWriter buffers small messages and sends large payloads without
// copying them: pending bytes and the payload leave together in one
// writev on sockets.
type replyWriter struct {
	w    io.Writer
	buf  []byte
	held int   // replies in buf (the server's sender counts them); 0 whenever buf is sent
	err  error // the first failed write; every later Flush returns it
}

func newReplyWriter(w io.Writer) *replyWriter {
	return &replyWriter{w: w, buf: make([]byte, 0, 64<<10)}
}

func (rw *replyWriter) Reset(w io.Writer) { rw.w, rw.buf, rw.held, rw.err = w, rw.buf[:0], 0, nil }

// Write buffers p, or sends it at once with whatever is buffered if it is
// large. Errors surface from Flush or from the large write.
func (rw *replyWriter) Write(p []byte) (int, error) {
	if len(p) < largeWrite {
		rw.buf = append(rw.buf, p...)
		return len(p), nil
	}
	var err error
	if v, ok := rw.w.(interface {
		writev(a, b []byte) (int64, error)
	}); ok {
		_, err = v.writev(rw.buf, p)
	} else {
		bufs := net.Buffers{rw.buf, p}
		_, err = bufs.WriteTo(rw.w) // writev(2) on sockets
	}
	rw.buf, rw.held = rw.buf[:0], 0
	if err != nil && rw.err == nil {
		rw.err = err
	}
	return len(p), err
}

func (rw *replyWriter) WriteString(s string) (int, error) {
	rw.buf = append(rw.buf, s...)
	return len(s), nil
}

// Buffered reports how many bytes wait for Flush.
func (rw *replyWriter) Buffered() int { return len(rw.buf) }

// Flush sends the buffered bytes. After a failed write it fails at once.
func (rw *replyWriter) Flush() error {
	if rw.err != nil || len(rw.buf) == 0 {
		return rw.err
	}
	_, err := rw.w.Write(rw.buf)
	rw.buf, rw.held = rw.buf[:0], 0
	rw.err = err
	return err
}
