package nbd

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
// The zero value is not usable: make one with newParkLock.
type parkLock chan struct{}

func newParkLock() parkLock { return make(parkLock, 1) }

// Lock takes the lock, parking until it is free.
func (l parkLock) Lock() { l <- struct{}{} }

// Unlock lets the lock go, to the longest waiter if any.
func (l parkLock) Unlock() { <-l }
