// Package harness runs nbdlab against real tools nobody here wrote: it
// builds the nbdlab binary, starts "nbdlab serve" and peer servers as child
// processes, and checks what nbdinfo, nbdsh, nbdcopy, qemu-img, qemu-io and
// fio make of them. The conformance suite lives in this package's tests.
//
// Tests that need an external tool call Need. Outside CI a missing tool
// skips the test; with CI=true it fails it, so a CI run that passes has
// really exercised every peer. "go run mage.go deps" installs them all.
//
// Processes started here are killed when their context ends. Nothing needs
// root except what the lab VMs do.
package harness
