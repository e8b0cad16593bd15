package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Client is an NBD client connection in the transmission phase. Its
// methods may be called concurrently; requests are pipelined.
type Client struct {
	conn net.Conn
	br   *bufio.Reader
	Info ExportInfo

	wmu sync.Mutex
	bw  *bufio.Writer

	mu      sync.Mutex
	pending map[uint64]*call
	cookie  uint64
	err     error // set when the reader stops
	done    chan struct{}
}

type call struct {
	cmd Cmd
	off uint64
	n   int // bytes a read asked for
	// ext and err are the answer, set under Client.mu by whichever of
	// finish and fail removes the call from pending, before done closes;
	// the caller reads them once done is closed.
	ext  []Extent
	err  error
	done chan struct{}
	// rext and rerr are the reply as the reader collects it, chunk by
	// chunk: the reader's alone until finish hands them over.
	rext []Extent
	rerr error

	// bufMu guards buf: the reader holds it while it copies a reply in,
	// and a caller that gives up (its context ended) takes it to set buf
	// to nil, after which a late reply is read and dropped.
	bufMu sync.Mutex
	buf   []byte // read destination
}

// Dial connects to addr ("HOST:PORT" or "unix:PATH", as Listen takes) and
// negotiates.
func Dial(ctx context.Context, addr string, cfg *ClientConfig) (*Client, error) {
	a, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	c, err := a.DialConn(ctx)
	if err != nil {
		return nil, err
	}
	cl, err := NewClient(ctx, c, cfg)
	if err != nil {
		c.Close()
		return nil, err
	}
	return cl, nil
}

// NewClient negotiates on conn and returns a client ready for requests.
func NewClient(ctx context.Context, conn net.Conn, cfg *ClientConfig) (*Client, error) {
	h, info, err := negotiate(ctx, conn, cfg)
	if err != nil {
		return nil, err
	}
	c := &Client{conn: h.conn, br: h.br, bw: h.bw, Info: info, pending: map[uint64]*call{}, done: make(chan struct{})}
	go c.readLoop()
	return c, nil
}

// Conn returns the connection, for example to hand it to the kernel.
func (c *Client) Conn() net.Conn { return c.conn }

// Request is a raw transmission request, for tests and tools that need to
// send what the typed methods would refuse.
type Request struct {
	Cmd    Cmd
	Flags  CmdFlags
	Offset uint64
	Length uint32
	Data   []byte // payload for NBD_CMD_WRITE; its length need not match
}

// Do sends r and waits for its reply. Read data goes to buf.
func (c *Client) Do(ctx context.Context, r Request, buf []byte) ([]Extent, error) {
	cl := &call{cmd: r.Cmd, off: r.Offset, n: len(buf), buf: buf, done: make(chan struct{})}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	c.cookie++
	cookie := c.cookie
	if r.Cmd != CmdDisc {
		c.pending[cookie] = cl
	}
	c.mu.Unlock()
	var hdr [requestHeaderLen]byte
	c.wmu.Lock()
	c.bw.Write(AppendRequestHeader(hdr[:0], r, cookie))
	c.bw.Write(r.Data)
	err := c.bw.Flush()
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("nbd: send %v: %w", r.Cmd, err))
		return nil, err
	}
	if r.Cmd == CmdDisc {
		return nil, nil
	}
	select {
	case <-cl.done:
		return cl.ext, cl.err
	case <-ctx.Done():
		// The reply may still come: it is read and dropped, never
		// copied into a buffer the caller has taken back.
		cl.bufMu.Lock()
		cl.buf = nil
		cl.bufMu.Unlock()
		return nil, ctx.Err()
	}
}

// fillBuf reads n bytes of a reply to cl into its buffer at off, or drops
// them if its caller has given up.
func (c *Client) fillBuf(cl *call, off uint64, n int) error {
	cl.bufMu.Lock()
	defer cl.bufMu.Unlock()
	if cl.buf == nil {
		_, err := io.CopyN(io.Discard, c.br, int64(n))
		return err
	}
	_, err := io.ReadFull(c.br, cl.buf[off:off+uint64(n)])
	return err
}

// fail ends every pending request with err.
func (c *Client) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
	for k, cl := range c.pending {
		cl.err = c.err
		close(cl.done)
		delete(c.pending, k)
	}
}

func (c *Client) readLoop() {
	defer close(c.done)
	err := c.readReplies()
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = ErrClientClosed
	}
	c.fail(err)
}

func (c *Client) take(cookie uint64) (*call, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.pending[cookie]
	if cl == nil {
		return nil, fmt.Errorf("nbd: reply for unknown cookie %d", cookie)
	}
	return cl, nil
}

// finish answers the call of cookie with the reply the reader collected,
// unless fail answered it meanwhile (a send that failed, a Close): a call
// leaves pending, and its done closes, exactly once.
func (c *Client) finish(cookie uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.pending[cookie]
	if !ok {
		return
	}
	delete(c.pending, cookie)
	cl.err, cl.ext = cl.rerr, cl.rext
	close(cl.done)
}

func (c *Client) readReplies() error {
	var h [chunkHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.br, h[:replyMagicLen]); err != nil {
			return err
		}
		n, err := replyLen(h[:])
		if err != nil {
			return err
		}
		if _, err := io.ReadFull(c.br, h[replyMagicLen:n]); err != nil {
			return err
		}
		if n == chunkHeaderLen {
			ch, _ := parseChunkHeader(h[:])
			if err := c.chunk(ch); err != nil {
				return err
			}
			continue
		}
		sr, _ := parseSimpleReply(h[:])
		cl, err := c.take(sr.cookie)
		if err != nil {
			return err
		}
		if sr.errno != 0 {
			cl.rerr = &RequestError{Cmd: cl.cmd, Errno: sr.errno}
		} else if cl.cmd == CmdRead {
			if err := c.fillBuf(cl, 0, cl.n); err != nil {
				return err
			}
		}
		c.finish(sr.cookie)
	}
}

func (c *Client) chunk(h chunkHeader) error {
	flags, typ, cookie, n := h.flags, h.typ, h.cookie, h.length
	cl, err := c.take(cookie)
	if err != nil {
		return err
	}
	if n > max(MaxPayload, c.Info.MaxBlock)+64 {
		return fmt.Errorf("nbd: %d-byte reply chunk", n)
	}
	if typ == ReplyTypeOffsetData && n <= 8 {
		// The specification requires data in the chunk, as libnbd does.
		return &ProtocolError{Phase: "transmission", Msg: fmt.Sprintf("NBD_REPLY_TYPE_OFFSET_DATA chunk of %d bytes carries no data", n)}
	}
	switch {
	case typ == ReplyTypeOffsetData && cl.cmd == CmdRead:
		var ob [8]byte
		if _, err := io.ReadFull(c.br, ob[:]); err != nil {
			return err
		}
		off := binary.BigEndian.Uint64(ob[:])
		if off < cl.off || off-cl.off+uint64(n-8) > uint64(cl.n) {
			return fmt.Errorf("nbd: read chunk at %d+%d outside request %d+%d", off, n-8, cl.off, cl.n)
		}
		if err := c.fillBuf(cl, off-cl.off, int(n-8)); err != nil {
			return err
		}
	default:
		payload := make([]byte, n)
		if _, err := io.ReadFull(c.br, payload); err != nil {
			return err
		}
		switch {
		case typ == ReplyTypeOffsetHole && n == 12 && cl.cmd == CmdRead:
			off := binary.BigEndian.Uint64(payload)
			l := uint64(binary.BigEndian.Uint32(payload[8:]))
			if off < cl.off || off-cl.off+l > uint64(cl.n) {
				return fmt.Errorf("nbd: hole chunk outside request")
			}
			cl.bufMu.Lock()
			if cl.buf != nil {
				clear(cl.buf[off-cl.off : off-cl.off+l])
			}
			cl.bufMu.Unlock()
		case typ == ReplyTypeBlockStatus && n >= 4:
			for p := payload[4:]; len(p) >= 8; p = p[8:] {
				cl.rext = append(cl.rext, Extent{Length: int64(binary.BigEndian.Uint32(p)), Flags: binary.BigEndian.Uint32(p[4:])})
			}
		case typ.IsError() && n >= 6:
			ml := int(binary.BigEndian.Uint16(payload[4:]))
			msg := ""
			if 6+ml <= len(payload) {
				msg = string(payload[6 : 6+ml])
			}
			if cl.rerr == nil {
				cl.rerr = &RequestError{Cmd: cl.cmd, Errno: Errno(binary.BigEndian.Uint32(payload)), Msg: msg}
			}
		}
	}
	if flags&ReplyFlagDone != 0 {
		c.finish(cookie)
	}
	return nil
}

func (c *Client) check(off int64, n int) error {
	if off < 0 || int64(n) > c.Info.Size || off > c.Info.Size-int64(n) {
		return fmt.Errorf("nbd: request at %d+%d is outside the %d-byte export", off, n, c.Info.Size)
	}
	return nil
}

// ReadAt reads len(p) bytes at off, splitting requests at MaxBlock.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	return c.split(p, off, func(q []byte, o int64) error {
		_, err := c.Do(context.Background(), Request{Cmd: CmdRead, Offset: uint64(o), Length: uint32(len(q))}, q)
		return err
	})
}

// WriteAt writes p at off, splitting requests at MaxBlock.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	return c.split(p, off, func(q []byte, o int64) error {
		_, err := c.Do(context.Background(), Request{Cmd: CmdWrite, Offset: uint64(o), Length: uint32(len(q)), Data: q}, nil)
		return err
	})
}

func (c *Client) split(p []byte, off int64, fn func([]byte, int64) error) (int, error) {
	if err := c.check(off, len(p)); err != nil {
		return 0, err
	}
	max := int(min(c.Info.MaxBlock, MaxPayload))
	done := 0
	for done < len(p) {
		n := min(len(p)-done, max)
		if err := fn(p[done:done+n], off+int64(done)); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// Flush asks the server to make completed writes durable.
func (c *Client) Flush(ctx context.Context) error {
	_, err := c.Do(ctx, Request{Cmd: CmdFlush}, nil)
	return err
}

// Trim discards [off, off+n).
func (c *Client) Trim(ctx context.Context, off, n int64) error {
	_, err := c.Do(ctx, Request{Cmd: CmdTrim, Offset: uint64(off), Length: uint32(n)}, nil)
	return err
}

// WriteZeroes zeroes [off, off+n).
func (c *Client) WriteZeroes(ctx context.Context, off, n int64, flags CmdFlags) error {
	_, err := c.Do(ctx, Request{Cmd: CmdWriteZeroes, Flags: flags, Offset: uint64(off), Length: uint32(n)}, nil)
	return err
}

// Cache asks the server to prefetch [off, off+n).
func (c *Client) Cache(ctx context.Context, off, n int64) error {
	_, err := c.Do(ctx, Request{Cmd: CmdCache, Offset: uint64(off), Length: uint32(n)}, nil)
	return err
}

// BlockStatus returns base:allocation extents from off for up to n bytes.
func (c *Client) BlockStatus(ctx context.Context, off, n int64) ([]Extent, error) {
	return c.Do(ctx, Request{Cmd: CmdBlockStatus, Offset: uint64(off), Length: uint32(n)}, nil)
}

// Close sends NBD_CMD_DISC, lets the server answer the requests in
// flight and close its side, then closes the connection.
func (c *Client) Close() error {
	c.Do(context.Background(), Request{Cmd: CmdDisc}, nil)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
	}
	err := c.conn.Close()
	<-c.done
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
