// Package bench measures nbdlab against its peers. Every figure it prints
// comes from the same run: the same fio jobs against nbdlab serve, nbdkit
// and qemu-nbd, one after another, on the same machine.
//
// RunServer needs fio (with its nbd engine), nbdkit and qemu-nbd; "go run
// mage.go deps" installs them. File exports live on a tmpfs (/dev/shm by
// default) so that the servers, not a disk, are measured.
//
// Environment: BENCH_TIME sets the seconds each fio job runs (default 5),
// BENCH_ROUNDS how many times every job runs on every server (default 3);
// the report gives the median round and the range.
package bench
