package qcow2

import "fmt"

// Extent is a run of the virtual disk with one allocation state.
type Extent struct {
	Length int64
	Zero   bool // reads as zeroes
	Hole   bool // no data stored for it: unallocated in the whole chain, or zero-flagged
}

// maxExtentClusters bounds the clusters one Extents call looks at.
const maxExtentClusters = 1 << 16

// Extents describes a prefix of [off, off+n) of the virtual disk, at least
// one byte of it, from the L2 tables of the image and of its backing
// chain: data, zero-flagged clusters and holes.
func (img *Image) Extents(off, n int64) ([]Extent, error) {
	if off < 0 || n <= 0 || off >= img.Size() {
		return nil, fmt.Errorf("qcow2: extents of %d+%d on a %d-byte disk", off, n, img.Size())
	}
	img.mu.RLock()
	defer img.mu.RUnlock()
	return img.extents(off, n)
}

func (img *Image) extents(off, n int64) ([]Extent, error) {
	end := min(off+n, img.Size())
	cs := img.hdr.ClusterSize()
	var out []Extent
	add := func(e Extent) {
		if k := len(out) - 1; k >= 0 && out[k].Zero == e.Zero && out[k].Hole == e.Hole {
			out[k].Length += e.Length
			return
		}
		out = append(out, e)
	}
	for pos, i := off, 0; pos < end && i < maxExtentClusters; i++ {
		next := min(end, (pos/cs+1)*cs)
		m, err := img.lookup(pos)
		if err != nil {
			return nil, fmt.Errorf("qcow2 %s: guest offset %d: %w", img.path, pos, err)
		}
		switch m.kind {
		case normal, compressed:
			add(Extent{Length: next - pos})
		case zeroed:
			add(Extent{Length: next - pos, Zero: true, Hole: true})
		case unallocated:
			if err := img.backingExtents(pos, next, add); err != nil {
				return nil, err
			}
		}
		pos = next
	}
	return out, nil
}

// backingExtents describes [pos, end), which this image does not allocate,
// from the backing chain.
func (img *Image) backingExtents(pos, end int64, add func(Extent)) error {
	bs := int64(0)
	if img.backing != nil {
		bs = img.backing.Size()
	}
	for pos < end {
		if pos >= bs {
			add(Extent{Length: end - pos, Zero: true, Hole: true})
			return nil
		}
		b, ok := img.backing.(*Image)
		if !ok { // raw: all data
			n := min(end, bs) - pos
			add(Extent{Length: n})
			pos += n
			continue
		}
		ext, err := b.Extents(pos, min(end, bs)-pos) // its own lock: it is another image
		if err != nil {
			return err
		}
		for _, e := range ext {
			add(e)
			pos += e.Length
		}
	}
	return nil
}
