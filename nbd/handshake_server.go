package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
)

// Block size constraints advertised in NBD_INFO_BLOCK_SIZE: any byte
// granularity works, 4 KiB is preferred, Server.MaxPayload is the largest request.
const (
	minBlock       = 1
	preferredBlock = 4096
)

// metaContextID is the id given to base:allocation when it is selected.
const metaContextID = 1

// session is the state of one client connection.
type session struct {
	srv  *Server
	conn net.Conn // nil when serving a plain stream (fuzzing)
	in   *connReader
	br   *bufio.Reader // reads in
	bw   *replyWriter

	tls        bool
	noZeroes   bool
	structured bool
	metaAlloc  bool    // base:allocation selected ...
	metaExport *Export // ... for this export (the empty name is the default one)

	export *Export
}

func newSession(srv *Server, rw io.ReadWriter, conn net.Conn) *session {
	in := &connReader{rw}
	return &session{srv: srv, conn: conn, in: in, br: bufio.NewReaderSize(in, 128<<10), bw: newReplyWriter(rw)}
}

// connReader lets the session change the connection under its buffered
// reader without losing what the reader holds.
type connReader struct{ r io.Reader }

func (c *connReader) Read(p []byte) (int, error) { return c.r.Read(p) }

// switchConn makes c the session's connection.
func (s *session) switchConn(c net.Conn) {
	s.conn, s.in.r = c, c
	s.bw.Reset(c)
}

// negotiate runs the fixed-newstyle handshake until the client picks an
// export. It returns errAbort when the client aborts and a *ProtocolError
// when it breaks the protocol.
func (s *session) negotiate(ctx context.Context) error {
	s.bw.buf = appendGreeting(s.bw.buf, FlagFixedNewstyle|FlagNoZeroes)
	if err := s.bw.Flush(); err != nil {
		return err
	}
	var cf [clientFlagsLen]byte
	if _, err := io.ReadFull(s.br, cf[:]); err != nil {
		return err
	}
	flags := ClientFlags(binary.BigEndian.Uint32(cf[:]))
	if flags&^(FlagCFixedNewstyle|FlagCNoZeroes) != 0 {
		return handshakeErr("unknown client flags %#x", uint32(flags))
	}
	s.noZeroes = flags&FlagCNoZeroes != 0
	for n := 0; ; n++ {
		if n == maxOptions {
			return handshakeErr("more than %d options without choosing an export", maxOptions)
		}
		var hdr [optionHeaderLen]byte
		if _, err := io.ReadFull(s.br, hdr[:]); err != nil {
			return err
		}
		h, err := parseOptionHeader(hdr[:])
		if err != nil {
			return err
		}
		opt, size := h.opt, h.length
		if size > maxOptionLen {
			return handshakeErr("%v with %d bytes of data (limit %d)", opt, size, maxOptionLen)
		}
		data := make([]byte, size)
		if _, err := io.ReadFull(s.br, data); err != nil {
			return err
		}
		done, err := s.option(ctx, opt, data)
		if err != nil {
			return err
		}
		if err := s.bw.Flush(); err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// option answers one option; done is true when transmission starts.
func (s *session) option(ctx context.Context, opt Option, data []byte) (done bool, err error) {
	if s.srv.shuttingDown() && opt != OptAbort {
		if opt == OptExportName {
			return false, handshakeErr("server shutting down")
		}
		return false, s.replyErr(opt, RepErrShutdown, "server is shutting down")
	}
	if s.srv.TLSConfig != nil && !s.tls && opt != OptStartTLS && opt != OptAbort {
		if opt == OptExportName {
			return false, handshakeErr("%v before TLS, which this server requires", opt)
		}
		return false, s.replyErr(opt, RepErrTLSReqd, "this server requires TLS: send NBD_OPT_STARTTLS first")
	}
	switch opt {
	case OptExportName:
		e := s.srv.lookup(string(data))
		if e == nil {
			return false, handshakeErr("%v: no export named %q", opt, data)
		}
		if !s.selectExport(e) {
			return false, handshakeErr("%v: export %q was taken out by a reload", opt, data)
		}
		var b [exportNameReplyLen + exportNamePadLen]byte
		binary.BigEndian.PutUint64(b[0:], uint64(e.Backend.Size()))
		binary.BigEndian.PutUint16(b[8:], uint16(e.flags(s.structured)))
		if s.noZeroes {
			s.bw.Write(b[:exportNameReplyLen])
		} else {
			s.bw.Write(b[:])
		}
		return true, nil
	case OptAbort:
		s.reply(opt, RepAck, nil)
		s.bw.Flush()
		return false, errAbort
	case OptList:
		if len(data) != 0 {
			return false, s.replyErr(opt, RepErrInvalid, "NBD_OPT_LIST takes no data")
		}
		for _, e := range s.srv.exports() {
			b := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
			s.reply(opt, RepServer, append(b, e.Name...))
		}
		return false, s.reply(opt, RepAck, nil)
	case OptStartTLS:
		return false, s.startTLS(ctx, data)
	case OptInfo, OptGo:
		return s.info(opt, data)
	case OptStructuredReply:
		if len(data) != 0 {
			return false, s.replyErr(opt, RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		s.structured = true
		return false, s.reply(opt, RepAck, nil)
	case OptListMetaContext, OptSetMetaContext:
		return false, s.metaContext(opt, data)
	default:
		return false, s.replyErr(opt, RepErrUnsup, fmt.Sprintf("%v is not supported", opt))
	}
}

// selectExport makes e the session's export for transmission. It counts
// the connection as e's user before the reply that starts transmission
// is written, so a reload that takes e out after the client saw that
// reply finds e in use; false when a reload let go of e already.
func (s *session) selectExport(e *Export) bool {
	if !s.srv.use(e) {
		return false
	}
	s.export = e
	if s.metaExport != e {
		s.metaAlloc = false
	}
	return true
}

func (s *session) startTLS(ctx context.Context, data []byte) error {
	switch {
	case len(data) != 0:
		return s.replyErr(OptStartTLS, RepErrInvalid, "NBD_OPT_STARTTLS takes no data")
	case s.tls:
		return s.replyErr(OptStartTLS, RepErrInvalid, "TLS is already active")
	case s.srv.TLSConfig == nil || s.conn == nil:
		return s.replyErr(OptStartTLS, RepErrPolicy, "this server has no TLS certificate")
	}
	if err := s.reply(OptStartTLS, RepAck, nil); err != nil {
		return err
	}
	if err := s.bw.Flush(); err != nil {
		return err
	}
	if s.br.Buffered() != 0 {
		return handshakeErr("data sent after NBD_OPT_STARTTLS before the TLS handshake")
	}
	tc := tls.Server(s.conn, s.srv.TLSConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	s.switchConn(tc)
	s.tls = true
	// Nothing negotiated in the clear carries over.
	s.structured, s.metaAlloc, s.metaExport = false, false, nil
	return nil
}

func (s *session) info(opt Option, data []byte) (bool, error) {
	name, rest, ok := parseString(data)
	if !ok || len(rest) < 2 {
		return false, s.replyErr(opt, RepErrInvalid, fmt.Sprintf("%v: malformed export name", opt))
	}
	nreq := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return false, s.replyErr(opt, RepErrInvalid, fmt.Sprintf("%v: %d information requests but %d bytes", opt, nreq, len(rest)))
	}
	e := s.srv.lookup(name)
	if e == nil {
		return false, s.replyErr(opt, RepErrUnknown, fmt.Sprintf("no export named %q", name))
	}
	if opt == OptGo && !s.selectExport(e) {
		return false, s.replyErr(opt, RepErrUnknown, fmt.Sprintf("export %q was taken out by a reload", name))
	}
	want := map[InfoType]bool{}
	for i := 0; i < nreq; i++ {
		want[InfoType(binary.BigEndian.Uint16(rest[2*i:]))] = true
	}
	b := binary.BigEndian.AppendUint16(nil, uint16(InfoExport))
	b = binary.BigEndian.AppendUint64(b, uint64(e.Backend.Size()))
	b = binary.BigEndian.AppendUint16(b, uint16(e.flags(s.structured)))
	s.reply(opt, RepInfo, b)
	if want[InfoName] {
		s.reply(opt, RepInfo, append(binary.BigEndian.AppendUint16(nil, uint16(InfoName)), e.Name...))
	}
	if want[InfoDescription] && e.Description != "" {
		s.reply(opt, RepInfo, append(binary.BigEndian.AppendUint16(nil, uint16(InfoDescription)), e.Description...))
	}
	b = binary.BigEndian.AppendUint16(nil, uint16(InfoBlockSize))
	b = binary.BigEndian.AppendUint32(b, minBlock)
	b = binary.BigEndian.AppendUint32(b, preferredBlock)
	b = binary.BigEndian.AppendUint32(b, s.srv.maxPayload())
	s.reply(opt, RepInfo, b)
	return opt == OptGo, s.reply(opt, RepAck, nil)
}

func (s *session) metaContext(opt Option, data []byte) error {
	if !s.structured {
		return s.replyErr(opt, RepErrInvalid, fmt.Sprintf("%v needs NBD_OPT_STRUCTURED_REPLY first", opt))
	}
	name, rest, ok := parseString(data)
	if !ok || len(rest) < 4 {
		return s.replyErr(opt, RepErrInvalid, fmt.Sprintf("%v: malformed export name", opt))
	}
	nq := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for i := uint32(0); i < nq; i++ {
		var q string
		if q, rest, ok = parseString(rest); !ok {
			return s.replyErr(opt, RepErrInvalid, fmt.Sprintf("%v: malformed query %d", opt, i))
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		return s.replyErr(opt, RepErrInvalid, fmt.Sprintf("%v: %d bytes after the queries", opt, len(rest)))
	}
	e := s.srv.lookup(name)
	if e == nil {
		return s.replyErr(opt, RepErrUnknown, fmt.Sprintf("no export named %q", name))
	}
	match := opt == OptListMetaContext && len(queries) == 0
	for _, q := range queries {
		if q == MetaContextBaseAllocation || (opt == OptListMetaContext && q == "base:") {
			match = true
		}
	}
	if opt == OptSetMetaContext {
		s.metaAlloc, s.metaExport = match, e
	}
	if match {
		id := uint32(0)
		if opt == OptSetMetaContext {
			id = metaContextID
		}
		s.reply(opt, RepMetaContext, append(binary.BigEndian.AppendUint32(nil, id), MetaContextBaseAllocation...))
	}
	return s.reply(opt, RepAck, nil)
}

func (s *session) reply(opt Option, typ ReplyType, data []byte) error {
	s.bw.buf = appendOptionReplyHeader(s.bw.buf, optionReplyHeader{opt: opt, typ: typ, length: uint32(len(data))})
	_, err := s.bw.Write(data)
	return err
}

func (s *session) replyErr(opt Option, typ ReplyType, msg string) error {
	return s.reply(opt, typ, []byte(msg))
}
