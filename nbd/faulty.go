package nbd

import (
	"fmt"
	"strings"
	"syscall"
)

// Faulty is a Backend that fails every read and write touching one range
// with EIO, as a disk with bad sectors does: for testing what clients (the
// kernel, filesystems, md) make of errors. The rest reads and writes
// through.
type Faulty struct {
	Backend
	Off, Len int64
}

func (f *Faulty) hits(off int64, n int) bool {
	return off < f.Off+f.Len && off+int64(n) > f.Off
}

// ReadAt implements io.ReaderAt.
func (f *Faulty) ReadAt(p []byte, off int64) (int, error) {
	if f.hits(off, len(p)) {
		return 0, syscall.EIO
	}
	return f.Backend.ReadAt(p, off)
}

// WriteAt implements io.WriterAt.
func (f *Faulty) WriteAt(p []byte, off int64) (int, error) {
	if f.hits(off, len(p)) {
		return 0, syscall.EIO
	}
	return f.Backend.WriteAt(p, off)
}

// parseRange reads OFF+LEN with sizes as ParseSize takes them.
func parseRange(s string) (off, n int64, err error) {
	a, b, ok := strings.Cut(s, "+")
	if !ok {
		return 0, 0, fmt.Errorf("range %q: want OFFSET+LENGTH, like 64M+1M", s)
	}
	if off, err = ParseSize(a); err != nil {
		return 0, 0, fmt.Errorf("range %q: %w", s, err)
	}
	if n, err = ParseSize(b); err != nil || n == 0 {
		return 0, 0, fmt.Errorf("range %q: want a length of more than 0", s)
	}
	return off, n, nil
}
