// Package conform checks NBD servers against the protocol specification
// (doc/proto.md of the NBD project): its MUSTs and SHOULDs for servers in
// the handshake (greeting, options and their error replies, LIST, INFO,
// metadata contexts, ABORT), in transmission (reads, zero-length reads,
// FUA on every command, the error rules, block status, write zeroes,
// multi-conn consistency, DISC), and in defence (stalled handshakes,
// clients that never read their replies, many idle clients), each bounded
// in time and count.
//
// CheckServers runs the checks against any server reachable by an NBD
// URI, one server at a time, and returns a Report: a matrix of checks by
// servers, written as text, JSON, Markdown or JUnit. A failed MUST is a
// violation; a failed SHOULD is a warning; a check whose feature the
// server does not offer is not applicable, with the reason.
//
// Checks write to the export (at offsets below 48 KiB) unless it is
// read-only: point them at scratch exports. Traffic goes only to the
// servers named.
//
// RunKernel is the other suite: the kernel's nbd client against servers
// (nbdlab, nbd-server, nbdkit, qemu-nbd), on one kernel (Host) or on each
// kernel in a lab VM that runs the same code with Host. Its files follow
// a run: kernel.go (where it runs, the loop over servers and cases, the
// kernel log check), netns.go (a namespace and veth pair a server),
// kernel_servers.go (the servers and their request records),
// kernel_cases.go (blktests' nbd group, data, devices, timeouts, link
// faults), kernel_requests.go (the kernel's requests checked from the
// server's side) and kernel_faults.go (servers killed, namespaces
// deleted, errors injected, RAID1, TLS, module races). Its results are a
// Report too, a target a kernel and a server.
package conform
