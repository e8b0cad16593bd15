// Package qcow2 reads qcow2 disk images, versions 2 and 3, as the
// specification in QEMU's docs/interop/qcow2.txt describes them: the
// header and its extensions, the two-level cluster map (L1 and L2
// tables), zero-flagged, compressed (deflate) and unallocated clusters,
// and backing files (raw or qcow2, chained).
//
// An Image is an io.ReaderAt over the virtual disk. What the package does
// not read (encryption, external data files, extended L2 entries, zstd
// compression, unknown incompatible features) is refused by Open with an
// error naming the feature. Every offset the image gives is checked
// against the file before it is used: a malformed image gets an error,
// never a panic and never a read outside the file.
package qcow2
