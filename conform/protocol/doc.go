// Package protocol checks NBD servers against the protocol specification
// (doc/proto.md of the NBD project): its MUSTs and SHOULDs for servers in
// the handshake (greeting, options and their error replies, LIST, INFO,
// metadata contexts, ABORT), in transmission (reads, zero-length reads,
// FUA on every command, the error rules, block status, write zeroes,
// multi-conn consistency, DISC), and in defence (stalled handshakes,
// clients that never read their replies, many idle clients), each bounded
// in time and count.
//
// CheckServers runs the checks against any server reachable by an NBD
// URI, the servers side by side, and returns a report.Report. RunPeers
// starts nbdlab serve, nbdkit, qemu-nbd and nbd-server on unix sockets and
// checks them all.
//
// Checks write to the export (at offsets below 48 KiB) unless it is
// read-only: point them at scratch exports. Traffic goes only to the
// servers named.
package protocol
