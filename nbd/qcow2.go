package nbd

import (
	"fmt"

	"github.com/nbdlab/nbdlab/imagelock"
	"github.com/nbdlab/nbdlab/qcow2"
)

// Qcow2 is a Backend over a qcow2 image and its backing chain (package
// qcow2): reads, writes, trims and zero writes (by the zero flag where
// whole clusters allow), block status from its L2 tables.
type Qcow2 struct {
	*qcow2.Image
}

// OpenQcow2 opens the qcow2 image at path, for writing with
// imagelock.Writer, else read-only, and locks it and its backing files as
// QEMU would.
func OpenQcow2(path string, access imagelock.Mode) (*Qcow2, error) {
	img, err := qcow2.Open(path, qcow2.Options{Writable: access == imagelock.Writer, ForceShare: access == imagelock.ForceShare})
	if err != nil {
		return nil, fmt.Errorf("open qcow2 image: %w", err)
	}
	return &Qcow2{img}, nil
}

// Zero zeroes a range; a fast zero is refused where it would write data
// (parts of clusters, version 2 images).
func (q *Qcow2) Zero(off, n int64, flags ZeroFlags) error {
	cs := q.Header().ClusterSize()
	if flags.Fast && (q.Header().Version < 3 || off%cs != 0 || (n%cs != 0 && off+n != q.Size())) {
		return ENOTSUP
	}
	return q.Image.Zero(off, n, flags.NoHole)
}

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
