// Package kernels finds the kernels nbdlab boots in lab VMs and builds
// nbd.ko for: those installed on the host, under /boot or (Debian's newer
// layout) /usr/lib/modules alone, and those fetched from Debian's archive
// into nbdlab's cache without installing anything.
//
// A fetch (fetch.go) resolves debian:SUITE[/RELEASE] through the suite's
// signed indexes (package debian), downloads the kernel's image, its
// modules (one package or, in newer Debian, linux-binary-, linux-base- and
// linux-modules-), its headers (for Module.symvers) and linux-source-X.Y
// at exactly the image's version, unpacks all but the source into the
// kernel's own root (store.go) and runs depmod there. The source .deb is
// kept for kmod to unpack when it builds.
//
// Find (find.go) resolves what a user types after --kernel: "" (the newest
// installed), a release, or debian:SUITE[/RELEASE].
package kernels
