package nbd

import (
	"fmt"
)

// Window is a Backend that shows Size bytes of another from Offset on:
// a partition of a disk image, as qemu-nbd --offset and nbdkit's offset
// filter serve one. Trim, zeroing, block status and FUA pass through to
// the base where it has them, shifted, and fall back as the server would
// without them otherwise.
type Window struct {
	base         Backend
	offset, size int64
}

// NewWindow returns the window [offset, offset+size) of base; size 0
// means to the end of base.
func NewWindow(base Backend, offset, size int64) (*Window, error) {
	total := base.Size()
	if offset < 0 || size < 0 || offset > total {
		return nil, fmt.Errorf("offset %d: outside the %d bytes of the image", offset, total)
	}
	if size == 0 {
		size = total - offset
	}
	if size > total-offset {
		return nil, fmt.Errorf("offset %d and size %d: past the end of the %d bytes of the image", offset, size, total)
	}
	if size == 0 {
		return nil, fmt.Errorf("offset %d: leaves nothing of the %d bytes of the image", offset, total)
	}
	return &Window{base: base, offset: offset, size: size}, nil
}

// Size is the window's.
func (w *Window) Size() int64 { return w.size }

// Sync syncs the base.
func (w *Window) Sync() error { return w.base.Sync() }

// ReadAt reads from the base, shifted.
func (w *Window) ReadAt(p []byte, off int64) (int, error) { return w.base.ReadAt(p, off+w.offset) }

// WriteAt writes to the base, shifted.
func (w *Window) WriteAt(p []byte, off int64) (int, error) { return w.base.WriteAt(p, off+w.offset) }

// WriteAtFUA writes durably: through the base's FUA, or WriteAt then Sync.
func (w *Window) WriteAtFUA(p []byte, off int64) (int, error) {
	if fw, ok := w.base.(FUAWriter); ok {
		return fw.WriteAtFUA(p, off+w.offset)
	}
	n, err := w.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, w.base.Sync()
}

// Trim discards the range where the base can; elsewhere it writes
// zeroes, since a trimmed range reads as zeroes.
func (w *Window) Trim(off, n int64) error {
	if t, ok := w.base.(Trimmer); ok {
		return t.Trim(off+w.offset, n)
	}
	return writeZeroes(w.base, off+w.offset, n)
}

// Zero zeroes the range through the base's Zero, or by writing zeroes.
func (w *Window) Zero(off, n int64, flags ZeroFlags) error {
	if z, ok := w.base.(Zeroer); ok {
		return z.Zero(off+w.offset, n, flags)
	}
	if flags.Fast {
		return ENOTSUP
	}
	return writeZeroes(w.base, off+w.offset, n)
}

// Extents are the base's, shifted; all data where the base cannot say.
func (w *Window) Extents(off, n int64) ([]Extent, error) {
	return extentsOf(w.base, off+w.offset, n)
}
