// Package debian reads Debian's archive the way apt does, without apt and
// without touching the host's packages.
//
// The data runs through it in this order:
//
//  1. release.go: dists/SUITE/InRelease is fetched and its signature is
//     checked with gpgv against the archive keyring; only the signed text
//     is parsed. It lists the SHA256 and size of every index.
//  2. packages.go: the suite's Packages index (gz or xz, whichever the
//     Release lists) is fetched, checked against the Release's SHA256 and
//     parsed into packages (control.go parses the deb822 stanzas).
//  3. download.go: a package's .deb is fetched from the pool, resumed
//     where an earlier download stopped, with progress, and checked
//     against the index's size and SHA256. A file that fails a check is
//     discarded, never used.
//  4. unpack.go: dpkg-deb unpacks a checked .deb into a directory.
//
// An InRelease past its Valid-Until is reported, not refused: mirrors
// that are snapshots of the archive serve them, and the signature still
// binds every byte fetched to the archive's key.
package debian
