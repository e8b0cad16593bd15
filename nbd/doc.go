// Package nbd implements the Network Block Device protocol: the wire format,
// a concurrent server with pluggable backends, and the pieces the kernel
// client needs.
//
// The layout follows the protocol's phases: proto.go holds the wire
// constants under their specification names, handshake.go the fixed-newstyle
// option haggling, server.go the transmission phase, and mem.go, file.go and
// cow.go the backends a server exports.
//
// # Server
//
// A Server serves a fixed set of Exports. Serve runs an accept loop on a
// listener and always returns a non-nil error: ErrServerClosed after Shutdown
// or Close. Shutdown stops accepting, stops reading new requests, lets the
// requests in flight complete and be answered, flushes every backend and
// closes the connections; a session still in its handshake is told
// NBD_REP_ERR_SHUTDOWN or closed. Close drops everything at once. A panic while serving one
// connection is logged and ends only that connection.
//
// Requests on one connection run concurrently and are answered as they
// complete, so a slow request never holds up a fast one behind it. Replies
// are written under one lock per connection and flushed in groups: replies
// that complete together leave in one system call, and the last request in
// flight flushes at once.
//
// # Backends
//
// A Backend is an io.ReaderAt and io.WriterAt with a size and a Sync; an
// *os.File almost is one. Optional interfaces (Trimmer, Zeroer, Extenter,
// Cacher, FUAWriter) add the commands that need more than reads and writes.
// A backend error is sent to the client as the errno that matches it
// (ENOSPC, EPERM, EINVAL, ...), or EIO when nothing matches; an error that
// implements interface{ Errno() Errno } chooses its own.
//
// # Privileges
//
// Nothing here needs privileges beyond access to the exported files.
//
// BUG(nbdlab): extended headers (NBD_OPT_EXTENDED_HEADERS) and
// NBD_CMD_RESIZE are not implemented; clients that ask for them get
// NBD_REP_ERR_UNSUP or EINVAL.
package nbd
