package nbd

import (
	"errors"
	"fmt"
	"os"

	"github.com/nbdlab/nbdlab/qcow2"
)

// Qcow2 is a read-only Backend over a qcow2 image and its backing chain
// (package qcow2), with block status from its L2 tables. Writes need the
// cow option, which keeps them in memory.
type Qcow2 struct {
	*qcow2.Image
}

// errQcow2ReadOnly is what a write that reaches the image gets.
var errQcow2ReadOnly = errors.New("qcow2 images are served read-only: add ,ro, or ,cow to keep writes in memory")

// OpenQcow2 opens the qcow2 image at path.
func OpenQcow2(path string) (*Qcow2, error) {
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		return nil, fmt.Errorf("open qcow2 image: %w", err)
	}
	return &Qcow2{img}, nil
}

// WriteAt refuses: the image is read-only.
func (q *Qcow2) WriteAt(p []byte, off int64) (int, error) { return 0, errQcow2ReadOnly }

// Sync has nothing to do: nothing is written.
func (q *Qcow2) Sync() error { return nil }

// Extents reports data, zero-flagged clusters and holes.
func (q *Qcow2) Extents(off, n int64) ([]Extent, error) {
	ext, err := q.Image.Extents(off, n)
	if err != nil {
		return nil, err
	}
	out := make([]Extent, len(ext))
	for i, e := range ext {
		out[i].Length = e.Length
		if e.Hole {
			out[i].Flags |= StateHole
		}
		if e.Zero {
			out[i].Flags |= StateZero
		}
	}
	return out, nil
}

// IsQcow2 reports whether the file at path starts with the qcow2 magic.
func IsQcow2(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var m [4]byte
	_, err = f.ReadAt(m[:], 0)
	return err == nil && string(m[:]) == qcow2.Magic
}
