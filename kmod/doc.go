// Package kmod builds nbd.ko for a kernel that lacks it, from that kernel's
// own source, and installs it.
//
// Build runs in steps, each printed with its time:
//
//  1. Inspect, before fetching anything: the release, the distribution
//     (/etc/os-release and the release string) and the kernel's config
//     (/boot/config-KVER, /proc/config.gz for the running kernel, or the
//     headers' .config). A kernel without loadable modules, or with nbd
//     built in, ends the build here.
//  2. Fetch the exact source for the release through a Provider (Debian's
//     apt here; Ubuntu, RHEL and its rebuilds, Fedora, kernel.org, or a
//     local tree), checked against the provider's hashes and cached under
//     the user cache directory.
//  3. Configure a separate build directory with the distribution's config
//     (CONFIG_BLK_DEV_NBD=m) and Module.symvers, KERNELRELEASE=KVER,
//     olddefconfig and modules_prepare; then build nbd.ko alone as an
//     external module from the tree's drivers/block/nbd.c.
//  4. Verify that the module's vermagic is KVER and that its symbol CRCs
//     agree with KVER's Module.symvers; sign it if the kernel enforces
//     signatures.
//  5. Install it under /lib/modules/KVER/updates (which modprobe prefers to
//     kernel/), run depmod, write /etc/modprobe.d/nbd.conf unless one
//     exists, and load it if KVER is the running kernel.
//
// Installing needs root, and so do apt downloads. Commands are run through
// a command.Runner so tests can watch them; DryRun prints each step
// instead. Linux only.
// Full build logs go to a file named in any error.
package kmod
