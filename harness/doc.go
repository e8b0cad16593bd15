// Package harness is the test kit that runs nbdlab against real tools
// nobody here wrote: it starts "nbdlab serve" (waiting for its ready
// signal, never reading its log) and peer servers as child processes, and
// runs clients. The conformance suite that checks what nbdinfo, nbdsh,
// nbdcopy, qemu-img, qemu-io and fio make of nbdlab serve lives in this
// package's tests.
//
// It is a leaf: it imports the protocol package and internal helpers,
// nothing above them. Tests that need an external tool call testenv.Need:
// outside CI a missing tool skips the test; with CI=true it fails it, so a
// CI run that passes has really exercised every peer. "go run mage.go
// deps" installs them all.
//
// Processes started here are killed when their context ends. Nothing needs
// root.
package harness
