// Package servers starts the NBD servers nbdlab is measured and checked
// against, as child processes: "nbdlab serve" (waiting for its ready
// signal, never reading its log) and its peers nbd-server, nbdkit and
// qemu-nbd (waiting until they accept connections). table.go is the list
// of servers the kernel meets, by name, with the command line each runs
// under; proc.go starts, stops and watches a process.
//
// The kernel suite, the benchmarks and the main job use it at run time;
// the tests in harness use it too. It imports the protocol package and
// internal helpers, nothing above them. Processes started here are killed
// when their context ends. Nothing needs root.
package servers
