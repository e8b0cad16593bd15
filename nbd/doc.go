// Package nbd implements the Network Block Device protocol: the wire format,
// a concurrent server with pluggable backends, and the pieces the kernel
// client needs.
//
// The files follow the protocol's phases and a request's path:
//
//   - proto.go: the wire constants under their specification names, typed
//     flags that print those names;
//   - wire.go: the codec, one append and one parse for every fixed header
//     (greeting, option, option reply, request, simple reply, structured
//     chunk), shared by the server and the client; no other file reads or
//     writes a magic number;
//   - addr.go, uri.go: addresses (HOST:PORT, unix:PATH) and NBD URIs;
//   - server.go: the server's lifecycle (Serve, Shutdown, Close);
//   - conn.go: one connection, from accept to the end of its session;
//   - handshake_server.go, handshake_client.go: the fixed-newstyle option
//     haggling, each side of it;
//   - transmission.go: one session's transmission phase and its workers;
//     a request is read in reader.go, checked and run against the backend
//     in dispatch.go, and answered in reply.go (replywriter.go buffers
//     it); rawio_linux.go reads and writes the socket (and a file in
//     memory) with raw system calls; splice_linux.go sends large file
//     reads without copying them;
//   - bufpool.go: request and reply buffers reused by size;
//   - client.go: the client's transmission phase;
//   - backend.go, export.go and the backends mem.go, file_linux.go (file_other.go elsewhere), cow.go,
//     qcow2.go (package qcow2: read and written), faulty.go;
//   - errlog.go: the backend's errors, counted and logged at a bounded rate.
//
// # Server
//
// A Server serves its Exports, which SetExports replaces while it serves
// (an export taken out is flushed and handed to Retired once its last
// connection ends). Serve runs an accept loop on a listener and always
// returns a non-nil error: ErrServerClosed after Shutdown or Close.
// Shutdown stops accepting, stops reading new requests, lets the requests
// in flight complete and be answered, flushes every backend and closes the
// connections; a session still in its handshake is told
// NBD_REP_ERR_SHUTDOWN or closed; if its ctx ends first it closes what is
// left and returns at once, without waiting for backend calls that may
// never return. Close drops everything at once. A session's backend errors
// are logged (errlog.go) and counted on its disconnect line. A panic while serving one
// connection is logged and ends only that connection.
//
// Requests on one connection are answered as they complete. A session is
// served by up to Workers identical goroutines (16 by default), each of
// which takes the read side, reads one request and its payload, hands the
// read side on, runs the request and sends the reply under the write
// lock: as nbdkit's threads do, with no timing in any decision. A worker
// that reads a request while no other waits to read starts one, so a slow
// request never holds up the ones behind it; one that finishes while
// another already waits ends. A reply is held back only while more are
// sure to follow without the client: while another waits for the write
// lock (and goes out with it), or while the reader has requests in hand,
// which sends what is held before any read that may block; and never
// more than eight, so a client that sends more only as replies come back
// is not kept waiting for a whole burst. Reads and writes of memory (a
// memory export, or a file export on tmpfs or ramfs, which never waits
// for a device) of up to 64 KiB run on the worker that read them, holding
// the read side: the copy takes less than waking another worker would.
// They copy nothing in user space: such a write goes to the backend from
// the read buffer, where its data arrived, and such a read (under 32 KiB)
// is read into the reply buffer, behind its header.
//
// On Linux the socket is read and written with raw system calls, which
// never block (the socket is non-blocking; a call that would waits in the
// runtime's poller, deadlines included) and do not enter the runtime's
// system-call state: entering it wakes the runtime's monitor thread when
// the server is idle, which then polls every 20 µs for a while. At queue
// depth 1 every request found the server idle and paid for that polling;
// under emulation it doubled the server's CPU time per request.
//
// # Limits
//
// Everything a client can make the server hold is bounded: connections
// (MaxConnections), handshake time (HandshakeTimeout) and options (1,024),
// idle time when asked (IdleTimeout), time a reply may go untaken
// (WriteTimeout), bytes in flight per connection and server-wide
// (MaxInflight: a request holds its weight before its payload is read,
// so a client past its share is simply not read from; small requests run
// inline on memory weigh nothing, holding only the connection's own
// buffers), requests running
// per connection (Workers) and buffered replies (256 KiB per connection).
// An idle connection holds one goroutine waiting in the runtime's poller,
// and no thread. A session whose replies cannot be delivered stops at
// once and drops its queued requests.
//
// A large write to a memory export is read from the socket straight into
// the export's memory, one copy fewer. Reads of 128 KiB and more from a
// file export are spliced: the file's page-cache pages go through a pipe
// into the socket and the server copies nothing. The pipe is filled before
// the reply header is sent, so a read that fails is still answered with
// an error.
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
// # Privileges and platforms
//
// Nothing here needs privileges beyond access to the exported files. The
// package builds everywhere Go does; on Linux, file exports also splice
// large reads and know holes, trims, zeroing, FUA writes and block
// devices (file_linux.go, splice_linux.go), and elsewhere a file export
// is reads, writes and fsync (file_other.go). Package kernel, the
// kernel's client, is Linux's.
//
// BUG(nbdlab): extended headers (NBD_OPT_EXTENDED_HEADERS) and
// NBD_CMD_RESIZE are not implemented; clients that ask for them get
// NBD_REP_ERR_UNSUP or EINVAL.
package nbd
