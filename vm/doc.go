// Package vm runs a command under a real distro kernel in a QEMU VM, so
// that what needs nbd.ko, nfsd, md or netem can run on machines whose own
// kernel cannot load them.
//
// The guest's root is the host's, shared read-only over 9p under a tmpfs
// overlay: the guest can write anywhere without touching the host, and
// finds the host's tools and the project's binaries where they are on the
// host. Shares add writable host directories. /tmp and /run are fresh.
//
// The initramfs is generated here, in Go, and cached by content: a static
// init (the nbdlab binary itself, which calls GuestInit when it runs as PID
// 1) plus the modules 9p and overlayfs need, in the order the kernel's
// modules.dep gives. The init talks to the host over one virtio-serial
// port: it receives the command, streams its stdout and stderr back in
// order, reports the exit status, waits for the host's acknowledgement and
// powers off. The kernel's console goes to a log file, shown on failure.
// The guest has no network interface but loopback.
//
// KVM is used only where a short probe showed that a stock kernel really
// boots under it; the answer is cached. Otherwise QEMU runs under TCG.
//
// Needs: qemu-system-x86_64 and an installed kernel (/boot/vmlinuz-KVER
// with /lib/modules/KVER); no root. Several VMs may run at once. Linux
// only.
package vm
