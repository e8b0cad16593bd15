// Package bench measures nbdlab against its peers. Every figure it prints
// comes from the same run, on the same machine, against peers measured
// one after another in rounds.
//
// The files follow the three benchmarks:
//   - server.go, fio.go: fio's nbd engine against nbdlab serve, nbdkit and
//     qemu-nbd over a unix socket (RunServer). Environment: BENCH_TIME
//     sets the seconds each fio job runs (default 5), BENCH_ROUNDS the
//     rounds (default 3).
//   - kernel.go: fio on /dev/nbdN through the kernel's client against
//     every server in a network namespace (RunKernel), in a lab VM or on
//     this machine's kernel. Every server is up at once, so each job runs
//     on every server's device seconds apart and rounds compare pair by
//     pair (stats.go's comparePaired); the VM's clock counts instructions
//     (vm.Config.InstructionClock), so figures repeat however busy the
//     host is.
//   - NBD against NFS (RunNFS): agent.go is the server side (a tmpfs
//     offered over NBD or by nfsd.go's kernel NFS server, on request over
//     a control connection), workload.go and tree.go what the client
//     measures, nfs.go the client's run on one kernel, nfs_run.go the
//     namespace VM (on the instruction clock too) and the two linked VMs
//     (on the host's: two guests' instruction clocks would drift apart).
//   - results.go, report.go, plot.go: results.json, report.md and the
//     plots (gonum.org/v1/plot) of the kernel and NFS benchmarks.
//
// File exports live on a tmpfs so that the servers, not a disk, are
// measured. "go run mage.go deps" installs every tool used.
package bench
