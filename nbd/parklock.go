package nbd

import "sync/atomic"

// parkLock is a mutual-exclusion lock whose waiters park at once and are
// handed the lock in turn, never spinning. sync.Mutex spins on PAUSE
// before it parks a waiter, which pays where a lock is held for
// nanoseconds; the transmission's read and write sides are held across
// system calls and waits in the runtime's poller (a 1 MiB payload being
// read, a reply being sent), so there the spin only burns CPU. Under
// emulation it burns a great deal, since QEMU's TCG leaves its translated
// code at every PAUSE. In a lab VM (TCG, 2 vCPUs), 1 MiB writes at queue
// depth 4 to a tmpfs file export: workers spinning for the read side took
// 32% of the server's CPU (serve --cpuprofile), and its user time went
// from 9.4 ms a request to 1.0-1.6 ms once they parked, at 70 requests a
// second instead of 42 (nbdkit: 77-84). In bench kernel, nbdlab-file's
// user time a 1M write went from 7.7 ms to 2.8 (nbdkit-file: 0.55-1.0).
//
// Taking a free lock and letting go of one nobody waits for are one
// atomic addition each; only a waiter touches the channel. A lock that was
// itself a one-slot channel made a channel operation of every Lock and
// Unlock, each under the runtime's lock on the channel: with four of them
// a request, 4k writes at queue depth 1 took 4,530 instructions each in
// the server's user space, and 3,940 with this lock (valgrind's callgrind,
// fio's nbd engine over TCP on loopback, a file export in /dev/shm).
//
// The zero value is not usable: make one with newParkLock.
type parkLock struct {
	n    atomic.Int32  // the holder and the waiters
	turn chan struct{} // the holder letting go hands the lock to one waiter through it
}

func newParkLock() *parkLock { return &parkLock{turn: make(chan struct{}, 1)} }

// Lock takes the lock, parking until it is free.
func (l *parkLock) Lock() {
	if l.n.Add(1) > 1 {
		<-l.turn
	}
}

// Unlock lets the lock go, to a waiter if any. At most one hand-off is
// ever pending (only the holder sends, and a waiter holds once it has
// received), so the send never blocks.
func (l *parkLock) Unlock() {
	if l.n.Add(-1) > 0 {
		l.turn <- struct{}{}
	}
}
