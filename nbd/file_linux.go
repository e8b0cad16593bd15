package nbd

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/nbdlab/nbdlab/imagelock"

	"golang.org/x/sys/unix"
)

// File is a Backend over a regular file or a block device. For a regular
// file it is sparse-aware: block status comes from SEEK_DATA and SEEK_HOLE,
// TRIM punches holes and WRITE_ZEROES punches or zero-ranges where the file
// system can. FUA writes use RWF_DSYNC and FLUSH is fdatasync, so both reach
// stable storage.
type File struct {
	f        *os.File
	fd       int
	size     int64
	blockDev bool
	noSplice atomic.Bool // splice(2) failed with EINVAL: copy instead
	memory   bool        // the file lives in memory (tmpfs, ramfs)
	// unsynced is set after every change (a write, trim or zeroing, done
	// or failed) and cleared by the Sync that covers it: a FLUSH with
	// nothing written since the last one costs no fdatasync. Set only once
	// the change is made, so a Sync that clears it first still syncs,
	// and the next one sees it. It starts set: the first Sync covers
	// whatever was in the page cache when the file was opened.
	unsynced atomic.Bool
}

// OpenFile opens path, a regular file or a block device, as a backend:
// read-write for imagelock.Writer, else read-only. It takes QEMU's locks
// for that access (package imagelock), so that a second writer, nbdlab's
// or QEMU's, is refused.
func OpenFile(path string, access imagelock.Mode) (*File, error) {
	f, err := openLocked(path, access)
	if err != nil {
		return nil, err
	}
	b, err := newFile(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return b, nil
}

func newFile(f *os.File) (*File, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	// Fd puts the descriptor in blocking mode, which is what regular files
	// and block devices are in anyway.
	b := &File{f: f, fd: int(f.Fd())}
	b.unsynced.Store(true)
	switch {
	case fi.Mode().IsRegular():
		b.size = fi.Size()
		var st unix.Statfs_t
		if unix.Fstatfs(b.fd, &st) == nil {
			b.memory = st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC
		}
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		var size uint64
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(b.fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
			return nil, fmt.Errorf("size of block device %s: %w", f.Name(), errno)
		}
		b.size = int64(size)
		b.blockDev = true
	default:
		return nil, fmt.Errorf("%s is a %s, not a regular file or block device", f.Name(), fi.Mode().Type())
	}
	return b, nil
}

// inMemory reports whether the file is in memory (tmpfs, ramfs), where
// its reads and writes never wait for a device.
func (b *File) inMemory() bool { return b.memory }

// Size implements Backend.
func (b *File) Size() int64 { return b.size }

// ReadAt implements io.ReaderAt.
func (b *File) ReadAt(p []byte, off int64) (int, error) {
	if b.raw(p) {
		return rawPread(b.fd, p, off)
	}
	return b.f.ReadAt(p, off)
}

// raw reports whether a read or write of p is made with a raw system
// call (rawio_linux.go): a file in memory, a copy of at most
// rawFileMax, and an offset that fits one register.
func (b *File) raw(p []byte) bool {
	return b.memory && len(p) > 0 && len(p) <= rawFileMax && unsafe.Sizeof(uintptr(0)) == 8
}

// WriteAt implements io.WriterAt.
func (b *File) WriteAt(p []byte, off int64) (int, error) {
	defer b.unsynced.Store(true)
	if b.raw(p) {
		return rawPwrite(b.fd, p, off)
	}
	return b.f.WriteAt(p, off)
}

// WriteAtFUA implements FUAWriter with a single RWF_DSYNC write.
func (b *File) WriteAtFUA(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Pwritev2(b.fd, [][]byte{p[done:]}, off+int64(done), unix.RWF_DSYNC)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EOPNOTSUPP {
			// Kernels before 4.7 lack pwritev2 flags.
			if _, err := b.WriteAt(p[done:], off+int64(done)); err != nil {
				return done, err
			}
			return len(p), b.Sync()
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// fdatasync is unix.Fdatasync; a test counts the calls.
var fdatasync, realFdatasync = unix.Fdatasync, unix.Fdatasync

// Sync implements Backend with fdatasync.
// It is skipped when nothing changed since the last one.
func (b *File) Sync() error {
	if !b.unsynced.Swap(false) {
		return nil
	}
	if err := fdatasync(b.fd); err != nil {
		b.unsynced.Store(true)
		return err
	}
	return nil
}

// Close closes the file.
func (b *File) Close() error { return b.f.Close() }

// Trim implements Trimmer. Trimming is advisory: where the file system or
// device cannot discard, it succeeds without doing anything.
func (b *File) Trim(off, n int64) error {
	if n == 0 {
		return nil
	}
	defer b.unsynced.Store(true)
	var err error
	if b.blockDev {
		r := [2]uint64{uint64(off), uint64(n)}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(b.fd), unix.BLKDISCARD, uintptr(unsafe.Pointer(&r)))
		if errno != 0 {
			err = errno
		}
	} else {
		err = b.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) {
		return nil
	}
	return err
}

// Zero implements Zeroer. Without NoHole it punches a hole; with it, it
// zero-ranges in place, or punches and reallocates where the file system
// has no zero-range (tmpfs). Only when none of that works does it write
// zeroes, and then only if the caller did not ask for Fast.
func (b *File) Zero(off, n int64, flags ZeroFlags) error {
	if n == 0 {
		return nil
	}
	defer b.unsynced.Store(true)
	if b.blockDev {
		if err := b.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n); err == nil {
			return nil
		}
		if flags.Fast {
			return ENOTSUP
		}
		r := [2]uint64{uint64(off), uint64(n)}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(b.fd), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r))); errno != 0 {
			return errno
		}
		return nil
	}
	punch := func() error {
		return b.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}
	if !flags.NoHole {
		if punch() == nil {
			return nil
		}
	}
	if b.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil {
		return nil
	}
	if flags.NoHole && punch() == nil {
		if err := b.fallocate(unix.FALLOC_FL_KEEP_SIZE, off, n); err == nil {
			return nil
		}
		// The hole stays; it reads as zeroes, which is what was asked.
		return nil
	}
	if flags.Fast {
		return ENOTSUP
	}
	return writeZeroes(b, off, n)
}

func (b *File) fallocate(mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(b.fd, mode, off, n)
		if err != unix.EINTR {
			return err
		}
	}
}

// Cache implements Cacher with POSIX_FADV_WILLNEED.
func (b *File) Cache(off, n int64) error {
	return unix.Fadvise(b.fd, off, n, unix.FADV_WILLNEED)
}

// Extents implements Extenter with SEEK_DATA and SEEK_HOLE. A block device,
// or a file system without them, is reported as all data.
func (b *File) Extents(off, n int64) ([]Extent, error) {
	end := off + n
	if b.blockDev {
		return []Extent{{Length: n}}, nil
	}
	var out []Extent
	for pos := off; pos < end && len(out) < maxExtents; {
		data, err := unix.Seek(b.fd, pos, unix.SEEK_DATA)
		switch {
		case err == unix.ENXIO: // no data from pos to EOF
			data = end
		case err == unix.EINVAL || err == unix.EOPNOTSUPP:
			return appendExtent(out, end-pos, 0), nil
		case err != nil:
			return nil, fmt.Errorf("SEEK_DATA at %d: %w", pos, err)
		}
		if data > pos {
			hole := min(data, end) - pos
			out = appendExtent(out, hole, StateHole|StateZero)
			pos += hole
			continue
		}
		hole, err := unix.Seek(b.fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("SEEK_HOLE at %d: %w", pos, err)
		}
		run := min(hole, end) - pos
		if run <= 0 { // the file changed under us; call it data
			run = end - pos
		}
		out = appendExtent(out, run, 0)
		pos += run
	}
	return out, nil
}
