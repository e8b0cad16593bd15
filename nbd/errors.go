package nbd

import (
	"errors"
	"fmt"
)

// errAbort ends a session that the client ended with NBD_OPT_ABORT.
var errAbort = errors.New("client sent NBD_OPT_ABORT")

// ProtocolError is a malformed message from a peer. The session that
// received it is closed; the rest of the server is unaffected.
type ProtocolError struct {
	Phase string // "handshake" or "transmission"
	Msg   string
}

func (e *ProtocolError) Error() string { return "nbd: malformed " + e.Phase + ": " + e.Msg }

func handshakeErr(format string, a ...any) error {
	return &ProtocolError{Phase: "handshake", Msg: fmt.Sprintf(format, a...)}
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
