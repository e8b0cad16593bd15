// Package kernelsuite runs the kernel's nbd client against servers
// (nbdlab, nbd-server, nbdkit, qemu-nbd), on one kernel (Host) or on each
// kernel in a lab VM that runs the same code with Host. Its files follow
// a run: kernel.go (where it runs, the loop over servers and cases, the
// kernel log check), kernel_servers.go (a server in its network
// namespace, and its request record), kernel_cases.go (blktests' nbd
// group, data, devices, timeouts, link faults), kernel_requests.go (the
// kernel's requests checked from the server's side), kernel_faults.go
// (servers killed, namespaces deleted, errors injected, RAID1, TLS,
// module races) and durable.go (data that survives a server restart).
//
// Its results are a report.Report, a target a kernel and a server.
package kernelsuite
