// Package harness holds the tests that run nbdlab against real tools
// nobody here wrote: what nbdinfo, nbdsh, nbdcopy, qemu-img, qemu-io and
// fio make of nbdlab serve, qcow2 images after a crash, and the bounds a
// hostile client meets. It has no code of its own beyond this comment:
// the processes are started with package servers, which the suites and
// benchmarks use at run time.
//
// Tests that need an external tool call testenv.Need: outside CI a
// missing tool skips the test; with CI=true it fails it, so a CI run that
// passes has really exercised every peer. "go run mage.go deps" installs
// them all.
package harness
