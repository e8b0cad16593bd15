package nbd

import (
	"encoding/binary"
	"fmt"
)

// The codec: every fixed header of the protocol, with one append and one
// parse each, used by the server and the client alike. Nothing else in
// the package writes or reads a magic number. Appends add to a slice (a
// reply buffer, a scratch array); parses read a slice of at least the
// header's length and check its magic.

// Lengths of the protocol's fixed headers.
const (
	greetingLen          = 18  // NBDMAGIC, IHAVEOPT, handshake flags
	clientFlagsLen       = 4   // the client's answer to the greeting
	optionHeaderLen      = 16  // IHAVEOPT, option, data length
	optionReplyHeaderLen = 20  // reply magic, option, reply type, data length
	exportNameReplyLen   = 10  // size and flags after NBD_OPT_EXPORT_NAME
	exportNamePadLen     = 124 // zeroes after it, unless NBD_FLAG_C_NO_ZEROES
	requestHeaderLen     = 28  // magic, flags, type, cookie, offset, length
	simpleReplyLen       = 16  // magic, errno, cookie
	chunkHeaderLen       = 20  // magic, flags, type, cookie, length
	replyMagicLen        = 4   // what tells a simple reply from a chunk
)

// appendGreeting appends the server's first message.
func appendGreeting(b []byte, f HandshakeFlags) []byte {
	b = binary.BigEndian.AppendUint64(b, MagicInit)
	b = binary.BigEndian.AppendUint64(b, MagicOpt)
	return binary.BigEndian.AppendUint16(b, uint16(f))
}

// parseGreeting reads the server's first message.
func parseGreeting(b []byte) (HandshakeFlags, error) {
	if m, o := binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:]); m != MagicInit || o != MagicOpt {
		return 0, handshakeErr("greeting magic %#x %#x: the server does not speak newstyle NBD", m, o)
	}
	return HandshakeFlags(binary.BigEndian.Uint16(b[16:])), nil
}

// optionHeader precedes the data of a client's option.
type optionHeader struct {
	opt    Option
	length uint32
}

func appendOptionHeader(b []byte, h optionHeader) []byte {
	b = binary.BigEndian.AppendUint64(b, MagicOpt)
	b = binary.BigEndian.AppendUint32(b, uint32(h.opt))
	return binary.BigEndian.AppendUint32(b, h.length)
}

func parseOptionHeader(b []byte) (optionHeader, error) {
	if m := binary.BigEndian.Uint64(b); m != MagicOpt {
		return optionHeader{}, handshakeErr("option magic %#x, want %#x", m, MagicOpt)
	}
	return optionHeader{opt: Option(binary.BigEndian.Uint32(b[8:])), length: binary.BigEndian.Uint32(b[12:])}, nil
}

// optionReplyHeader precedes the data of the server's reply to an option.
type optionReplyHeader struct {
	opt    Option
	typ    ReplyType
	length uint32
}

func appendOptionReplyHeader(b []byte, h optionReplyHeader) []byte {
	b = binary.BigEndian.AppendUint64(b, MagicOptReply)
	b = binary.BigEndian.AppendUint32(b, uint32(h.opt))
	b = binary.BigEndian.AppendUint32(b, uint32(h.typ))
	return binary.BigEndian.AppendUint32(b, h.length)
}

func parseOptionReplyHeader(b []byte) (optionReplyHeader, error) {
	if m := binary.BigEndian.Uint64(b); m != MagicOptReply {
		return optionReplyHeader{}, handshakeErr("option reply magic %#x, want %#x", m, MagicOptReply)
	}
	return optionReplyHeader{
		opt:    Option(binary.BigEndian.Uint32(b[8:])),
		typ:    ReplyType(binary.BigEndian.Uint32(b[12:])),
		length: binary.BigEndian.Uint32(b[16:]),
	}, nil
}

// request is one transmission request header.
type request struct {
	flags  CmdFlags
	cmd    Cmd
	cookie uint64
	off    uint64
	length uint32
}

func appendRequest(b []byte, r request) []byte {
	b = binary.BigEndian.AppendUint32(b, MagicRequest)
	b = binary.BigEndian.AppendUint16(b, uint16(r.flags))
	b = binary.BigEndian.AppendUint16(b, uint16(r.cmd))
	b = binary.BigEndian.AppendUint64(b, r.cookie)
	b = binary.BigEndian.AppendUint64(b, r.off)
	return binary.BigEndian.AppendUint32(b, r.length)
}

// AppendRequestHeader appends the wire header of r with cookie (not its
// Data), for tools that send raw requests of their own.
func AppendRequestHeader(b []byte, r Request, cookie uint64) []byte {
	return appendRequest(b, request{flags: r.Flags, cmd: r.Cmd, cookie: cookie, off: r.Offset, length: r.Length})
}

func parseRequest(b []byte) (request, error) {
	if m := binary.BigEndian.Uint32(b); m != MagicRequest {
		return request{}, &ProtocolError{Phase: "transmission", Msg: fmt.Sprintf("request magic %#x, want %#x", m, MagicRequest)}
	}
	return request{
		flags:  CmdFlags(binary.BigEndian.Uint16(b[4:])),
		cmd:    Cmd(binary.BigEndian.Uint16(b[6:])),
		cookie: binary.BigEndian.Uint64(b[8:]),
		off:    binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// simpleReply is the header of a simple reply; read data follows it.
type simpleReply struct {
	errno  Errno
	cookie uint64
}

func appendSimpleReply(b []byte, r simpleReply) []byte {
	b = binary.BigEndian.AppendUint32(b, MagicSimpleReply)
	b = binary.BigEndian.AppendUint32(b, uint32(r.errno))
	return binary.BigEndian.AppendUint64(b, r.cookie)
}

func parseSimpleReply(b []byte) (simpleReply, error) {
	if m := binary.BigEndian.Uint32(b); m != MagicSimpleReply {
		return simpleReply{}, &ProtocolError{Phase: "transmission", Msg: fmt.Sprintf("simple reply magic %#x", m)}
	}
	return simpleReply{errno: Errno(binary.BigEndian.Uint32(b[4:])), cookie: binary.BigEndian.Uint64(b[8:])}, nil
}

// chunkHeader is the header of one structured reply chunk.
type chunkHeader struct {
	flags  uint16
	typ    ChunkType
	cookie uint64
	length uint32
}

func appendChunkHeader(b []byte, h chunkHeader) []byte {
	b = binary.BigEndian.AppendUint32(b, MagicStructuredReply)
	b = binary.BigEndian.AppendUint16(b, h.flags)
	b = binary.BigEndian.AppendUint16(b, uint16(h.typ))
	b = binary.BigEndian.AppendUint64(b, h.cookie)
	return binary.BigEndian.AppendUint32(b, h.length)
}

func parseChunkHeader(b []byte) (chunkHeader, error) {
	if m := binary.BigEndian.Uint32(b); m != MagicStructuredReply {
		return chunkHeader{}, &ProtocolError{Phase: "transmission", Msg: fmt.Sprintf("structured reply magic %#x", m)}
	}
	return chunkHeader{
		flags:  binary.BigEndian.Uint16(b[4:]),
		typ:    ChunkType(binary.BigEndian.Uint16(b[6:])),
		cookie: binary.BigEndian.Uint64(b[8:]),
		length: binary.BigEndian.Uint32(b[16:]),
	}, nil
}

// replyLen tells from a reply's first replyMagicLen bytes how long its
// header is: simpleReplyLen or chunkHeaderLen.
func replyLen(b []byte) (int, error) {
	switch m := binary.BigEndian.Uint32(b); m {
	case MagicSimpleReply:
		return simpleReplyLen, nil
	case MagicStructuredReply:
		return chunkHeaderLen, nil
	default:
		return 0, &ProtocolError{Phase: "transmission", Msg: fmt.Sprintf("reply magic %#x", m)}
	}
}

// appendString appends a string with its 32-bit length before it, as
// export names and metadata context queries travel.
func appendString(b []byte, s string) []byte {
	return append(binary.BigEndian.AppendUint32(b, uint32(len(s))), s...)
}

// parseString reads a 32-bit-length-prefixed string of at most maxString
// bytes from b.
func parseString(b []byte) (s string, rest []byte, ok bool) {
	if len(b) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if n > maxString || uint64(len(b)-4) < uint64(n) {
		return "", nil, false
	}
	return string(b[4 : 4+n]), b[4+n:], true
}
