// Package imagelock takes and tests the byte-range locks that QEMU puts on
// the disk images it opens, so that nbdlab and QEMU (qemu-nbd, qemu-img,
// a running VM) refuse each other as a second writer the way two QEMU
// processes do.
//
// The locks are open file description (OFD) locks, fcntl F_OFD_SETLK, on
// single bytes of the image file. Each access right has a bit number:
// consistent read 0, write 1, write-unchanged 2, resize 3. A process that
// uses right i holds a shared lock on byte 100+i; a process that does not
// let others use right i holds a shared lock on byte 200+i. Before it
// opens an image for an access, a process tests (F_OFD_GETLK, as for an
// exclusive lock) byte 200+i for every right i it wants, and byte 100+i
// for every right i it does not share: a lock held there by another open
// file is a conflict. Shared locks never conflict with each other, so
// taking them cannot fail; only the test can.
//
// What nbdlab takes, as QEMU does for the same access:
//   - a writer: uses consistent read, write and resize; shares neither
//     write nor resize;
//   - a reader (read-only, or the image under copy-on-write): uses
//     consistent read; shares neither write nor resize, so a reader and a
//     writer refuse each other;
//   - a forced share (qemu-img -U, nbdlab --force-share): takes nothing
//     and tests nothing; it is for readers only, who accept that the image
//     may change under them.
//
// The locks live as long as the open file description: closing the file
// gives them back, and so does the process dying. Two opens of one image
// in the same process are two descriptions and refuse each other too.
// Filesystems without OFD locks (some network filesystems) make Lock
// return an error wrapping ErrUnsupported; callers go on without a lock.
package imagelock
