package nbd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/nbdlab/nbdlab/imagelock"
)

// Backend is the storage behind an export. ReadAt and WriteAt are called
// concurrently from many goroutines, never beyond Size.
type Backend interface {
	io.ReaderAt
	io.WriterAt
	// Size is the export size in bytes; it does not change while serving.
	Size() int64
	// Sync makes every completed write durable.
	Sync() error
}

// Trimmer is a Backend that can discard a range (NBD_CMD_TRIM). After a
// trim the range reads as zeroes.
type Trimmer interface {
	Trim(off, n int64) error
}

// ZeroFlags qualify a Zero call.
type ZeroFlags struct {
	// NoHole asks that the range stay allocated (NBD_CMD_FLAG_NO_HOLE).
	NoHole bool
	// Fast asks to fail with ENOTSUP rather than write zeroes slowly
	// (NBD_CMD_FLAG_FAST_ZERO).
	Fast bool
}

// Zeroer is a Backend that can zero a range without a data payload
// (NBD_CMD_WRITE_ZEROES). A backend without it gets zero-filled writes.
type Zeroer interface {
	Zero(off, n int64, flags ZeroFlags) error
}

// Extent is a run of bytes with the same base:allocation state.
type Extent struct {
	Length int64
	Flags  uint32 // StateHole, StateZero
}

// Extenter is a Backend that knows which ranges are allocated. Extents
// describes a prefix of [off, off+n), at least one byte of it, in order.
// A backend without it reports everything as allocated data.
type Extenter interface {
	Extents(off, n int64) ([]Extent, error)
}

// Cacher is a Backend that can prefetch a range (NBD_CMD_CACHE).
type Cacher interface {
	Cache(off, n int64) error
}

// FUAWriter is a Backend that can make one write durable without a whole
// Sync (NBD_CMD_FLAG_FUA). A backend without it gets WriteAt then Sync.
type FUAWriter interface {
	WriteAtFUA(p []byte, off int64) (int, error)
}

// errnoOf maps a backend error to the value sent on the wire.
func errnoOf(err error) Errno {
	var chooser interface{ Errno() Errno }
	if errors.As(err, &chooser) {
		return chooser.Errno()
	}
	var se syscall.Errno
	if errors.As(err, &se) {
		switch se {
		case syscall.EPERM, syscall.EROFS, syscall.EACCES:
			return EPERM
		case syscall.ENOMEM:
			return ENOMEM
		case syscall.EINVAL:
			return EINVAL
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return ENOSPC
		case syscall.EOVERFLOW:
			return EOVERFLOW
		case syscall.ENOTSUP:
			return ENOTSUP
		case syscall.ESHUTDOWN:
			return ESHUTDOWN
		}
	}
	return EIO
}

// zeroChunk bounds the buffer of one zero-filled write.
const zeroChunk = 1 << 20

// writeZeroes zero-fills [off, off+n) with plain writes. The zeroes are
// its own: a buffer shared between calls would carry whatever a careless
// backend wrote into it to every later caller, so it is cleared before
// each write.
func writeZeroes(w io.WriterAt, off, n int64) error {
	buf := make([]byte, min(n, zeroChunk))
	for n > 0 {
		chunk := buf[:min(n, int64(len(buf)))]
		clear(chunk)
		if _, err := w.WriteAt(chunk, off); err != nil {
			return err
		}
		off += int64(len(chunk))
		n -= int64(len(chunk))
	}
	return nil
}

// maxExtents bounds one Extents answer; the client asks again for the rest.
const maxExtents = 1024

// openLocked opens an image file for access with QEMU's locks for it
// (imagelock.Open).
func openLocked(path string, access imagelock.Mode) (*os.File, error) {
	f, err := imagelock.Open(path, access)
	var ce *imagelock.ConflictError
	if err != nil && !errors.As(err, &ce) {
		return nil, fmt.Errorf("open export file: %w", err)
	}
	return f, err
}
