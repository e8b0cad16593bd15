package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// ClientConfig configures a client handshake. The zero value asks for the
// default export with structured replies and base:allocation.
type ClientConfig struct {
	// Export is the export name; empty selects the server's default.
	Export string
	// TLSConfig, when set, makes the client upgrade with NBD_OPT_STARTTLS
	// before anything else.
	TLSConfig *tls.Config
	// NoStructuredReplies keeps to simple replies (no block status).
	NoStructuredReplies bool
}

// ExportInfo is what the server told about the export during the handshake.
type ExportInfo struct {
	Name          string
	Size          int64
	Flags         TransmissionFlags
	MinBlock      uint32
	PreferredBlck uint32
	MaxBlock      uint32
	Structured    bool
	BaseAlloc     bool
}

// OptionError is an error reply to a handshake option.
type OptionError struct {
	Option Option
	Reply  ReplyType
	Msg    string
}

func (e *OptionError) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("nbd: %v: %v", e.Option, e.Reply)
	}
	return fmt.Sprintf("nbd: %v: %v: %s", e.Option, e.Reply, e.Msg)
}

// RequestError is an error reply to a transmission request.
type RequestError struct {
	Cmd   Cmd
	Errno Errno
	Msg   string
}

func (e *RequestError) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("nbd: %v: %v", e.Cmd, e.Errno)
	}
	return fmt.Sprintf("nbd: %v: %v: %s", e.Cmd, e.Errno, e.Msg)
}

// Unwrap lets errors.Is(err, nbd.EPERM) work.
func (e *RequestError) Unwrap() error { return e.Errno }

// ErrClientClosed is returned for requests on a closed client.
var ErrClientClosed = errors.New("nbd: client closed")

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
	cmd  Cmd
	off  uint64
	buf  []byte   // read destination
	ext  []Extent // block status result
	err  error
	done chan struct{}
}

// Dial connects to addr ("HOST:PORT" or "unix:PATH", as Listen takes) and
// negotiates.
func Dial(ctx context.Context, addr string, cfg *ClientConfig) (*Client, error) {
	network, a := "tcp", addr
	if p, ok := cutUnix(addr); ok {
		network, a = "unix", p
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, a)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", addr, err)
	}
	cl, err := NewClient(ctx, c, cfg)
	if err != nil {
		c.Close()
		return nil, err
	}
	return cl, nil
}

func cutUnix(addr string) (string, bool) {
	if len(addr) > 5 && addr[:5] == "unix:" {
		return addr[5:], true
	}
	return "", false
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

// Negotiate runs the handshake on conn and returns what the server said
// and the connection to continue on (conn itself, or its TLS session),
// positioned at the start of the transmission phase. It is for handing the
// connection to something else, such as the kernel.
func Negotiate(ctx context.Context, conn net.Conn, cfg *ClientConfig) (ExportInfo, net.Conn, error) {
	h, info, err := negotiate(ctx, conn, cfg)
	if err != nil {
		return info, nil, err
	}
	if h.br.Buffered() != 0 {
		return info, nil, errors.New("nbd: server sent data after the handshake")
	}
	return info, h.conn, nil
}

func negotiate(ctx context.Context, conn net.Conn, cfg *ClientConfig) (*clientHandshake, ExportInfo, error) {
	if cfg == nil {
		cfg = &ClientConfig{}
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
		defer conn.SetDeadline(time.Time{})
	}
	h := &clientHandshake{conn: conn, br: bufio.NewReader(conn), bw: bufio.NewWriter(conn)}
	info, err := h.run(ctx, cfg)
	return h, info, err
}

// Conn returns the connection, for example to hand it to the kernel.
func (c *Client) Conn() net.Conn { return c.conn }

type clientHandshake struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
}

func (h *clientHandshake) run(ctx context.Context, cfg *ClientConfig) (ExportInfo, error) {
	var info ExportInfo
	var hello [18]byte
	if _, err := io.ReadFull(h.br, hello[:]); err != nil {
		return info, fmt.Errorf("nbd: read server greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != MagicInit || binary.BigEndian.Uint64(hello[8:]) != MagicOpt {
		return info, errors.New("nbd: server does not speak newstyle NBD")
	}
	sflags := HandshakeFlags(binary.BigEndian.Uint16(hello[16:]))
	if sflags&FlagFixedNewstyle == 0 {
		return info, errors.New("nbd: server does not support fixed newstyle")
	}
	cflags := FlagCFixedNewstyle
	if sflags&FlagNoZeroes != 0 {
		cflags |= FlagCNoZeroes
	}
	h.bw.Write(binary.BigEndian.AppendUint32(nil, uint32(cflags)))
	if cfg.TLSConfig != nil {
		if _, err := h.simple(OptStartTLS, nil); err != nil {
			return info, err
		}
		tc := tls.Client(h.conn, cfg.TLSConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return info, fmt.Errorf("nbd: TLS handshake: %w", err)
		}
		h.conn = tc
		h.br.Reset(tc)
		h.bw.Reset(tc)
	}
	if !cfg.NoStructuredReplies {
		if _, err := h.simple(OptStructuredReply, nil); err == nil {
			info.Structured = true
		} else if oe := (*OptionError)(nil); !errors.As(err, &oe) {
			return info, err
		}
	}
	if info.Structured {
		q := appendString(nil, cfg.Export)
		q = binary.BigEndian.AppendUint32(q, 1)
		q = appendString(q, MetaContextBaseAllocation)
		replies, err := h.simple(OptSetMetaContext, q)
		if oe := (*OptionError)(nil); err != nil && !errors.As(err, &oe) {
			return info, err
		}
		for _, r := range replies {
			if r.typ == RepMetaContext && len(r.data) >= 4 && string(r.data[4:]) == MetaContextBaseAllocation {
				info.BaseAlloc = true
			}
		}
	}
	q := appendString(nil, cfg.Export)
	q = binary.BigEndian.AppendUint16(q, 2)
	q = binary.BigEndian.AppendUint16(q, uint16(InfoName))
	q = binary.BigEndian.AppendUint16(q, uint16(InfoBlockSize))
	replies, err := h.simple(OptGo, q)
	if err != nil {
		return info, err
	}
	info.Name = cfg.Export
	info.MinBlock, info.PreferredBlck, info.MaxBlock = 1, 4096, MaxPayload
	for _, r := range replies {
		if r.typ != RepInfo || len(r.data) < 2 {
			continue
		}
		d := r.data[2:]
		switch InfoType(binary.BigEndian.Uint16(r.data)) {
		case InfoExport:
			if len(d) >= 10 {
				info.Size = int64(binary.BigEndian.Uint64(d))
				info.Flags = TransmissionFlags(binary.BigEndian.Uint16(d[8:]))
			}
		case InfoName:
			info.Name = string(d)
		case InfoBlockSize:
			if len(d) >= 12 {
				info.MinBlock = binary.BigEndian.Uint32(d)
				info.PreferredBlck = binary.BigEndian.Uint32(d[4:])
				info.MaxBlock = binary.BigEndian.Uint32(d[8:])
			}
		}
	}
	return info, nil
}

type optReply struct {
	typ  ReplyType
	data []byte
}

// simple sends one option and collects its replies up to the final ACK.
func (h *clientHandshake) simple(opt Option, data []byte) ([]optReply, error) {
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[0:], MagicOpt)
	binary.BigEndian.PutUint32(hdr[8:], uint32(opt))
	binary.BigEndian.PutUint32(hdr[12:], uint32(len(data)))
	h.bw.Write(hdr[:])
	h.bw.Write(data)
	if err := h.bw.Flush(); err != nil {
		return nil, fmt.Errorf("nbd: send %v: %w", opt, err)
	}
	var out []optReply
	for {
		var rh [20]byte
		if _, err := io.ReadFull(h.br, rh[:]); err != nil {
			return nil, fmt.Errorf("nbd: read reply to %v: %w", opt, err)
		}
		if binary.BigEndian.Uint64(rh[0:]) != MagicOptReply || Option(binary.BigEndian.Uint32(rh[8:])) != opt {
			return nil, fmt.Errorf("nbd: malformed reply to %v", opt)
		}
		typ := ReplyType(binary.BigEndian.Uint32(rh[12:]))
		n := binary.BigEndian.Uint32(rh[16:])
		if n > maxOptionLen {
			return nil, fmt.Errorf("nbd: %d-byte reply to %v", n, opt)
		}
		d := make([]byte, n)
		if _, err := io.ReadFull(h.br, d); err != nil {
			return nil, fmt.Errorf("nbd: read reply to %v: %w", opt, err)
		}
		if typ.IsError() {
			return nil, &OptionError{Option: opt, Reply: typ, Msg: string(d)}
		}
		if typ == RepAck {
			return out, nil
		}
		out = append(out, optReply{typ, d})
	}
}

func appendString(b []byte, s string) []byte {
	return append(binary.BigEndian.AppendUint32(b, uint32(len(s))), s...)
}

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
	cl := &call{cmd: r.Cmd, off: r.Offset, buf: buf, done: make(chan struct{})}
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
	binary.BigEndian.PutUint32(hdr[0:], MagicRequest)
	binary.BigEndian.PutUint16(hdr[4:], uint16(r.Flags))
	binary.BigEndian.PutUint16(hdr[6:], uint16(r.Cmd))
	binary.BigEndian.PutUint64(hdr[8:], cookie)
	binary.BigEndian.PutUint64(hdr[16:], r.Offset)
	binary.BigEndian.PutUint32(hdr[24:], r.Length)
	c.wmu.Lock()
	c.bw.Write(hdr[:])
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
		return nil, ctx.Err()
	}
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

func (c *Client) finish(cookie uint64) {
	c.mu.Lock()
	cl := c.pending[cookie]
	delete(c.pending, cookie)
	c.mu.Unlock()
	close(cl.done)
}

func (c *Client) readReplies() error {
	var h [structuredHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.br, h[:4]); err != nil {
			return err
		}
		switch binary.BigEndian.Uint32(h[:]) {
		case MagicSimpleReply:
			if _, err := io.ReadFull(c.br, h[4:simpleReplyLen]); err != nil {
				return err
			}
			errno := Errno(binary.BigEndian.Uint32(h[4:]))
			cookie := binary.BigEndian.Uint64(h[8:])
			cl, err := c.take(cookie)
			if err != nil {
				return err
			}
			if errno != 0 {
				cl.err = &RequestError{Cmd: cl.cmd, Errno: errno}
			} else if cl.cmd == CmdRead {
				if _, err := io.ReadFull(c.br, cl.buf); err != nil {
					return err
				}
			}
			c.finish(cookie)
		case MagicStructuredReply:
			if _, err := io.ReadFull(c.br, h[4:]); err != nil {
				return err
			}
			if err := c.chunk(h); err != nil {
				return err
			}
		default:
			return fmt.Errorf("nbd: bad reply magic %#x", binary.BigEndian.Uint32(h[:]))
		}
	}
}

func (c *Client) chunk(h [structuredHeaderLen]byte) error {
	flags := binary.BigEndian.Uint16(h[4:])
	typ := ChunkType(binary.BigEndian.Uint16(h[6:]))
	cookie := binary.BigEndian.Uint64(h[8:])
	n := binary.BigEndian.Uint32(h[16:])
	cl, err := c.take(cookie)
	if err != nil {
		return err
	}
	if n > MaxPayload+64 {
		return fmt.Errorf("nbd: %d-byte reply chunk", n)
	}
	switch {
	case typ == ReplyTypeOffsetData && n >= 8 && cl.cmd == CmdRead:
		var ob [8]byte
		if _, err := io.ReadFull(c.br, ob[:]); err != nil {
			return err
		}
		off := binary.BigEndian.Uint64(ob[:])
		if off < cl.off || off-cl.off+uint64(n-8) > uint64(len(cl.buf)) {
			return fmt.Errorf("nbd: read chunk at %d+%d outside request %d+%d", off, n-8, cl.off, len(cl.buf))
		}
		if _, err := io.ReadFull(c.br, cl.buf[off-cl.off:off-cl.off+uint64(n-8)]); err != nil {
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
			if off < cl.off || off-cl.off+l > uint64(len(cl.buf)) {
				return fmt.Errorf("nbd: hole chunk outside request")
			}
			clear(cl.buf[off-cl.off : off-cl.off+l])
		case typ == ReplyTypeBlockStatus && n >= 4:
			for p := payload[4:]; len(p) >= 8; p = p[8:] {
				cl.ext = append(cl.ext, Extent{Length: int64(binary.BigEndian.Uint32(p)), Flags: binary.BigEndian.Uint32(p[4:])})
			}
		case typ.IsError() && n >= 6:
			ml := int(binary.BigEndian.Uint16(payload[4:]))
			msg := ""
			if 6+ml <= len(payload) {
				msg = string(payload[6 : 6+ml])
			}
			if cl.err == nil {
				cl.err = &RequestError{Cmd: cl.cmd, Errno: Errno(binary.BigEndian.Uint32(payload)), Msg: msg}
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
