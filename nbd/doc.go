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
//   - transmission.go: one session's transmission phase; a request is read
//     in reader.go, validated and run against the backend in dispatch.go,
//     and answered in reply.go (replywriter.go buffers it);
//   - stall.go, bufpool.go, fdconn_linux.go, park_linux.go, splice_linux.go:
//     what keeps that path fast and bounded (stall hand-off, buffer reuse,
//     blocking sockets off the poller that park when idle, spliced reads);
//   - client.go: the client's transmission phase;
//   - backend.go, export.go and the backends mem.go, file.go, cow.go,
//     qcow2.go (package qcow2 read-only), faulty.go.
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
// Requests on one connection are answered as they complete. Small reads
// and writes run on the goroutine that reads the connection, as long as the
// backend answers them at once (a memory export, a file in the page
// cache): handing each to another goroutine would cost more than the work.
// Three small requests in a row slower than 50µs send the next thousand to
// worker goroutines, where slow requests overlap (one alone is a thread
// preempted for a moment); so do large requests, flushes, trims and the
// rest. An inline request that stalls for good is noticed
// within 10 ms, and a new goroutine takes over reading, so a slow request
// never holds up the ones behind it for long. Replies are written under
// one lock per connection and flushed in groups: the reader flushes before
// it waits for the client, and a worker's reply goes at once unless others
// are about to join it.
//
// # Limits
//
// Everything a client can make the server hold is bounded: connections
// (MaxConnections), handshake time (HandshakeTimeout) and options (1,024),
// idle time when asked (IdleTimeout), time a reply may go untaken
// (WriteTimeout), bytes in flight per connection and server-wide
// (MaxInflight), buffered replies (256 KiB per connection), and threads:
// a connection blocks on a thread only while fewer than MaxBlocked do, and
// for a second at most; then it parks in the server's own epoll set
// (park_linux.go). A session whose replies cannot be delivered stops at
// once and drops its queued requests.
//
// Plain TCP and unix-socket connections are taken out of the Go runtime's
// network poller once the handshake is done: each connection's reader
// blocks in read(2) on its own thread, as a C server's would. The poller
// would wake a thread every time the client drained a batch of replies;
// on small requests those wake-ups cost more than the requests. TLS
// connections stay in the poller. Unix-socket connections ask for a 4 MiB
// send buffer, so that a large reply does not stop its writer again and
// again.
//
// A large write payload is read from the socket into place, not through
// the read buffer: into the request's buffer, or for a memory export into
// fresh 64 KiB chunks that replace the ones the write covers whole. While
// it streams in from a client on the same machine and nothing else of the
// session runs, the reader polls the socket for up to 100µs before it
// sleeps: a unix socket passes a megabyte on in five or more pieces, and
// each would be a sleep and a wake-up on both sides.
//
// Reads of 128 KiB and more from a file export are spliced: the file's
// page-cache pages go through a pipe into the socket and the server copies
// nothing. The pipe is filled before the reply header is sent, so a read
// that fails is still answered with an error.
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
// package builds on Linux only: the server's sockets, spliced reads and
// the file backend's holes use Linux system calls.
//
// BUG(nbdlab): extended headers (NBD_OPT_EXTENDED_HEADERS) and
// NBD_CMD_RESIZE are not implemented; clients that ask for them get
// NBD_REP_ERR_UNSUP or EINVAL.
package nbd
