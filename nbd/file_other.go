//go:build !linux

package nbd

import (
	"fmt"
	"os"

	"github.com/nbdlab/nbdlab/imagelock"
)

// File is a Backend over a regular file: reads, writes and fsync. Holes,
// trims, zeroing, block status and block devices are Linux's (file_linux.go).
type File struct {
	f    *os.File
	size int64
}

// OpenFile opens path, a regular file, as a backend: read-write for
// imagelock.Writer, else read-only.
func OpenFile(path string, access imagelock.Mode) (*File, error) {
	f, err := openLocked(path, access)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is a %s, not a regular file", path, fi.Mode().Type())
	}
	return &File{f: f, size: fi.Size()}, nil
}

func (b *File) inMemory() bool { return false }

// Size implements Backend.
func (b *File) Size() int64 { return b.size }

// ReadAt implements io.ReaderAt.
func (b *File) ReadAt(p []byte, off int64) (int, error) { return b.f.ReadAt(p, off) }

// WriteAt implements io.WriterAt.
func (b *File) WriteAt(p []byte, off int64) (int, error) { return b.f.WriteAt(p, off) }

// Sync implements Backend.
func (b *File) Sync() error { return b.f.Sync() }

// Close closes the file.
func (b *File) Close() error { return b.f.Close() }
