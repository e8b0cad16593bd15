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
	Name           string
	Size           int64
	Flags          TransmissionFlags
	MinBlock       uint32
	PreferredBlock uint32
	MaxBlock       uint32
	Structured     bool
	BaseAlloc      bool
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

type clientHandshake struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
}

// greet reads the server's greeting and answers it: fixed newstyle, and
// no zeroes when the server offers it.
func (h *clientHandshake) greet() (HandshakeFlags, error) {
	var hello [greetingLen]byte
	if _, err := io.ReadFull(h.br, hello[:]); err != nil {
		return 0, fmt.Errorf("nbd: read server greeting: %w", err)
	}
	sflags, err := parseGreeting(hello[:])
	if err != nil {
		return sflags, err
	}
	if sflags&FlagFixedNewstyle == 0 {
		return sflags, errors.New("nbd: server does not support fixed newstyle")
	}
	cflags := FlagCFixedNewstyle
	if sflags&FlagNoZeroes != 0 {
		cflags |= FlagCNoZeroes
	}
	h.bw.Write(binary.BigEndian.AppendUint32(nil, uint32(cflags)))
	return sflags, nil
}

func (h *clientHandshake) run(ctx context.Context, cfg *ClientConfig) (ExportInfo, error) {
	var info ExportInfo
	if _, err := h.greet(); err != nil {
		return info, err
	}
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
	info.MinBlock, info.PreferredBlock, info.MaxBlock = 1, 4096, MaxPayload
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
				info.PreferredBlock = binary.BigEndian.Uint32(d[4:])
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

// OptionClient sends handshake options one at a time and returns the
// server's replies as they are: for tools that test servers.
type OptionClient struct {
	h *clientHandshake
	// Flags are the server's handshake flags.
	Flags HandshakeFlags
}

// OptionReply is one reply to an option, before the final ACK.
type OptionReply struct {
	Type ReplyType
	Data []byte
}

// StartOptions reads the server's greeting on conn and answers it (fixed
// newstyle, no zeroes if offered). Deadlines are the caller's, on conn.
func StartOptions(conn net.Conn) (*OptionClient, error) {
	h := &clientHandshake{conn: conn, br: bufio.NewReader(conn), bw: bufio.NewWriter(conn)}
	f, err := h.greet()
	if err != nil {
		return nil, err
	}
	return &OptionClient{h: h, Flags: f}, nil
}

// Option sends opt with data and returns the replies up to the ACK. An
// error reply comes back as an *OptionError.
func (o *OptionClient) Option(opt Option, data []byte) ([]OptionReply, error) {
	rs, err := o.h.simple(opt, data)
	out := make([]OptionReply, len(rs))
	for i, r := range rs {
		out[i] = OptionReply{r.typ, r.data}
	}
	return out, err
}

// Send sends raw bytes, for malformed options.
func (o *OptionClient) Send(b []byte) error {
	o.h.bw.Write(b)
	return o.h.bw.Flush()
}

// simple sends one option and collects its replies up to the final ACK.
func (h *clientHandshake) simple(opt Option, data []byte) ([]optReply, error) {
	h.bw.Write(appendOptionHeader(nil, optionHeader{opt: opt, length: uint32(len(data))}))
	h.bw.Write(data)
	if err := h.bw.Flush(); err != nil {
		return nil, fmt.Errorf("nbd: send %v: %w", opt, err)
	}
	var out []optReply
	for {
		var rh [optionReplyHeaderLen]byte
		if _, err := io.ReadFull(h.br, rh[:]); err != nil {
			return nil, fmt.Errorf("nbd: read reply to %v: %w", opt, err)
		}
		hdr, err := parseOptionReplyHeader(rh[:])
		if err != nil {
			return nil, fmt.Errorf("nbd: reply to %v: %w", opt, err)
		}
		if hdr.opt != opt {
			return nil, fmt.Errorf("nbd: reply to %v came for %v", opt, hdr.opt)
		}
		typ, n := hdr.typ, hdr.length
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
