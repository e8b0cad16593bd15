package nbd

import (
	"fmt"
	"strings"
)

// Magic numbers of the newstyle handshake and the transmission phase.
const (
	MagicInit            uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	MagicOpt             uint64 = 0x49484156454F5054 // "IHAVEOPT"
	MagicOptReply        uint64 = 0x0003e889045565a9
	MagicRequest         uint32 = 0x25609513
	MagicSimpleReply     uint32 = 0x67446698
	MagicStructuredReply uint32 = 0x668e33ef
)

// DefaultPort is the IANA-registered NBD port.
const DefaultPort = 10809

// Sizes fixed by the protocol or chosen by this implementation.
const (
	// MaxPayload is the largest READ or WRITE payload this package accepts
	// or sends: 32 MiB, the size the specification says no peer should
	// treat as a denial of service.
	MaxPayload = 32 << 20
	// DefaultMaxPayload is the largest READ or WRITE payload a Server
	// accepts by default (Server.MaxPayload): what the reference
	// implementation's own test client sends after NBD_OPT_EXPORT_NAME,
	// where no block sizes are negotiated, fits.
	DefaultMaxPayload = 64 << 20
	// maxOptionLen bounds the data of one handshake option. The longest
	// legitimate option (SET_META_CONTEXT with a few queries) is far below.
	maxOptionLen = 64 << 10
	// maxString is the specification's limit on names and messages.
	maxString = 4096
)

// HandshakeFlags are sent by the server after the initial magic.
type HandshakeFlags uint16

// Handshake flags.
const (
	FlagFixedNewstyle HandshakeFlags = 1 << 0
	FlagNoZeroes      HandshakeFlags = 1 << 1
)

// ClientFlags are sent by the client in answer to HandshakeFlags.
type ClientFlags uint32

// Client flags.
const (
	FlagCFixedNewstyle ClientFlags = 1 << 0
	FlagCNoZeroes      ClientFlags = 1 << 1
)

// TransmissionFlags describe an export and the commands it supports.
type TransmissionFlags uint16

// Transmission flags.
const (
	FlagHasFlags         TransmissionFlags = 1 << 0
	FlagReadOnly         TransmissionFlags = 1 << 1
	FlagSendFlush        TransmissionFlags = 1 << 2
	FlagSendFUA          TransmissionFlags = 1 << 3
	FlagRotational       TransmissionFlags = 1 << 4
	FlagSendTrim         TransmissionFlags = 1 << 5
	FlagSendWriteZeroes  TransmissionFlags = 1 << 6
	FlagSendDF           TransmissionFlags = 1 << 7
	FlagCanMultiConn     TransmissionFlags = 1 << 8
	FlagSendResize       TransmissionFlags = 1 << 9
	FlagSendCache        TransmissionFlags = 1 << 10
	FlagSendFastZero     TransmissionFlags = 1 << 11
	FlagBlockStatPayload TransmissionFlags = 1 << 12
)

var transmissionFlagNames = []string{
	"NBD_FLAG_HAS_FLAGS", "NBD_FLAG_READ_ONLY", "NBD_FLAG_SEND_FLUSH",
	"NBD_FLAG_SEND_FUA", "NBD_FLAG_ROTATIONAL", "NBD_FLAG_SEND_TRIM",
	"NBD_FLAG_SEND_WRITE_ZEROES", "NBD_FLAG_SEND_DF", "NBD_FLAG_CAN_MULTI_CONN",
	"NBD_FLAG_SEND_RESIZE", "NBD_FLAG_SEND_CACHE", "NBD_FLAG_SEND_FAST_ZERO",
	"NBD_FLAG_BLOCK_STAT_PAYLOAD",
}

func (f TransmissionFlags) String() string { return bitNames(uint64(f), transmissionFlagNames) }

// Option is a handshake option request.
type Option uint32

// Handshake options.
const (
	OptExportName      Option = 1
	OptAbort           Option = 2
	OptList            Option = 3
	OptPeekExport      Option = 4
	OptStartTLS        Option = 5
	OptInfo            Option = 6
	OptGo              Option = 7
	OptStructuredReply Option = 8
	OptListMetaContext Option = 9
	OptSetMetaContext  Option = 10
	OptExtendedHeaders Option = 11
)

var optionNames = map[Option]string{
	OptExportName: "NBD_OPT_EXPORT_NAME", OptAbort: "NBD_OPT_ABORT",
	OptList: "NBD_OPT_LIST", OptPeekExport: "NBD_OPT_PEEK_EXPORT",
	OptStartTLS: "NBD_OPT_STARTTLS", OptInfo: "NBD_OPT_INFO", OptGo: "NBD_OPT_GO",
	OptStructuredReply: "NBD_OPT_STRUCTURED_REPLY",
	OptListMetaContext: "NBD_OPT_LIST_META_CONTEXT",
	OptSetMetaContext:  "NBD_OPT_SET_META_CONTEXT",
	OptExtendedHeaders: "NBD_OPT_EXTENDED_HEADERS",
}

func (o Option) String() string { return nameOr(optionNames, o, "NBD_OPT") }

// ReplyType is the type of a handshake option reply.
type ReplyType uint32

const repErr ReplyType = 1 << 31

// Option reply types.
const (
	RepAck              ReplyType = 1
	RepServer           ReplyType = 2
	RepInfo             ReplyType = 3
	RepMetaContext      ReplyType = 4
	RepErrUnsup                   = repErr + 1
	RepErrPolicy                  = repErr + 2
	RepErrInvalid                 = repErr + 3
	RepErrPlatform                = repErr + 4
	RepErrTLSReqd                 = repErr + 5
	RepErrUnknown                 = repErr + 6
	RepErrShutdown                = repErr + 7
	RepErrBlockSizeReqd           = repErr + 8
	RepErrTooBig                  = repErr + 9
)

var replyTypeNames = map[ReplyType]string{
	RepAck: "NBD_REP_ACK", RepServer: "NBD_REP_SERVER", RepInfo: "NBD_REP_INFO",
	RepMetaContext: "NBD_REP_META_CONTEXT", RepErrUnsup: "NBD_REP_ERR_UNSUP",
	RepErrPolicy: "NBD_REP_ERR_POLICY", RepErrInvalid: "NBD_REP_ERR_INVALID",
	RepErrPlatform: "NBD_REP_ERR_PLATFORM", RepErrTLSReqd: "NBD_REP_ERR_TLS_REQD",
	RepErrUnknown: "NBD_REP_ERR_UNKNOWN", RepErrShutdown: "NBD_REP_ERR_SHUTDOWN",
	RepErrBlockSizeReqd: "NBD_REP_ERR_BLOCK_SIZE_REQD", RepErrTooBig: "NBD_REP_ERR_TOO_BIG",
}

func (r ReplyType) String() string { return nameOr(replyTypeNames, r, "NBD_REP") }

// IsError reports whether r is one of the error replies.
func (r ReplyType) IsError() bool { return r&repErr != 0 }

// InfoType is the type of an NBD_REP_INFO reply.
type InfoType uint16

// Information types of NBD_OPT_INFO and NBD_OPT_GO.
const (
	InfoExport      InfoType = 0
	InfoName        InfoType = 1
	InfoDescription InfoType = 2
	InfoBlockSize   InfoType = 3
)

var infoTypeNames = map[InfoType]string{
	InfoExport: "NBD_INFO_EXPORT", InfoName: "NBD_INFO_NAME",
	InfoDescription: "NBD_INFO_DESCRIPTION", InfoBlockSize: "NBD_INFO_BLOCK_SIZE",
}

func (i InfoType) String() string { return nameOr(infoTypeNames, i, "NBD_INFO") }

// Cmd is a transmission-phase command.
type Cmd uint16

// Commands.
const (
	CmdRead        Cmd = 0
	CmdWrite       Cmd = 1
	CmdDisc        Cmd = 2
	CmdFlush       Cmd = 3
	CmdTrim        Cmd = 4
	CmdCache       Cmd = 5
	CmdWriteZeroes Cmd = 6
	CmdBlockStatus Cmd = 7
	CmdResize      Cmd = 8
)

var cmdNames = map[Cmd]string{
	CmdRead: "NBD_CMD_READ", CmdWrite: "NBD_CMD_WRITE", CmdDisc: "NBD_CMD_DISC",
	CmdFlush: "NBD_CMD_FLUSH", CmdTrim: "NBD_CMD_TRIM", CmdCache: "NBD_CMD_CACHE",
	CmdWriteZeroes: "NBD_CMD_WRITE_ZEROES", CmdBlockStatus: "NBD_CMD_BLOCK_STATUS",
	CmdResize: "NBD_CMD_RESIZE",
}

func (c Cmd) String() string { return nameOr(cmdNames, c, "NBD_CMD") }

// CmdFlags modify a command.
type CmdFlags uint16

// Command flags.
const (
	CmdFlagFUA        CmdFlags = 1 << 0
	CmdFlagNoHole     CmdFlags = 1 << 1
	CmdFlagDF         CmdFlags = 1 << 2
	CmdFlagReqOne     CmdFlags = 1 << 3
	CmdFlagFastZero   CmdFlags = 1 << 4
	CmdFlagPayloadLen CmdFlags = 1 << 5
)

var cmdFlagNames = []string{
	"NBD_CMD_FLAG_FUA", "NBD_CMD_FLAG_NO_HOLE", "NBD_CMD_FLAG_DF",
	"NBD_CMD_FLAG_REQ_ONE", "NBD_CMD_FLAG_FAST_ZERO", "NBD_CMD_FLAG_PAYLOAD_LEN",
}

func (f CmdFlags) String() string { return bitNames(uint64(f), cmdFlagNames) }

// ChunkType is the type of a structured reply chunk.
type ChunkType uint16

// Structured reply chunk types and flags.
const (
	ReplyTypeNone        ChunkType = 0
	ReplyTypeOffsetData  ChunkType = 1
	ReplyTypeOffsetHole  ChunkType = 2
	ReplyTypeBlockStatus ChunkType = 5
	ReplyTypeError       ChunkType = 1<<15 + 1
	ReplyTypeErrorOffset ChunkType = 1<<15 + 2

	ReplyFlagDone uint16 = 1 << 0
)

var chunkTypeNames = map[ChunkType]string{
	ReplyTypeNone: "NBD_REPLY_TYPE_NONE", ReplyTypeOffsetData: "NBD_REPLY_TYPE_OFFSET_DATA",
	ReplyTypeOffsetHole: "NBD_REPLY_TYPE_OFFSET_HOLE", ReplyTypeBlockStatus: "NBD_REPLY_TYPE_BLOCK_STATUS",
	ReplyTypeError: "NBD_REPLY_TYPE_ERROR", ReplyTypeErrorOffset: "NBD_REPLY_TYPE_ERROR_OFFSET",
}

func (c ChunkType) String() string { return nameOr(chunkTypeNames, c, "NBD_REPLY_TYPE") }

// IsError reports whether c is an error chunk.
func (c ChunkType) IsError() bool { return c&(1<<15) != 0 }

// Errno is an error value on the wire. The values are those of Linux, as
// the specification requires.
type Errno uint32

// Wire error values.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

var errnoNames = map[Errno]string{
	0: "OK", EPERM: "EPERM", EIO: "EIO", ENOMEM: "ENOMEM", EINVAL: "EINVAL", ENOSPC: "ENOSPC",
	EOVERFLOW: "EOVERFLOW", ENOTSUP: "ENOTSUP", ESHUTDOWN: "ESHUTDOWN",
}

func (e Errno) String() string { return nameOr(errnoNames, e, "errno") }

// Error makes an Errno usable as an error, for example as a backend's answer.
func (e Errno) Error() string { return "nbd: " + e.String() }

// Errno returns e itself, so that an Errno chooses its own wire value.
func (e Errno) Errno() Errno { return e }

// Block status flags of the base:allocation metadata context.
const (
	StateHole uint32 = 1 << 0
	StateZero uint32 = 1 << 1
)

// MetaContextBaseAllocation is the one metadata context this package serves.
const MetaContextBaseAllocation = "base:allocation"

func nameOr[K ~uint16 | ~uint32](names map[K]string, k K, prefix string) string {
	if n, ok := names[k]; ok {
		return n
	}
	return fmt.Sprintf("%s_UNKNOWN(%d)", prefix, uint64(k))
}

func bitNames(v uint64, names []string) string {
	if v == 0 {
		return "0"
	}
	var parts []string
	for i, n := range names {
		if v&(1<<i) != 0 {
			parts = append(parts, n)
			v &^= 1 << i
		}
	}
	if v != 0 {
		parts = append(parts, fmt.Sprintf("%#x", v))
	}
	return strings.Join(parts, "|")
}
