package nbd

import "sync"

const cowBlockShift = 12 // 4 KiB copy-on-write granularity
const cowBlock = 1 << cowBlockShift

// COW is a copy-on-write Backend: reads come from the base until a block is
// written, writes go to a sparse in-memory overlay, and the base is never
// written. Everything written is lost when the COW is dropped.
type COW struct {
	base    Backend
	over    *Mem
	mu      sync.RWMutex
	present []uint64 // bit per 4 KiB block: the overlay holds it
}

// NewCOW returns a copy-on-write view of base.
func NewCOW(base Backend) *COW {
	size := base.Size()
	blocks := (size + cowBlock - 1) >> cowBlockShift
	return &COW{base: base, over: NewMem(size), present: make([]uint64, (blocks+63)/64)}
}

// Size implements Backend.
func (c *COW) Size() int64 { return c.base.Size() }

// Sync implements Backend: the overlay lives in memory and the base is not
// written, so there is nothing to flush.
func (c *COW) Sync() error { return nil }

func (c *COW) has(blk int64) bool { return c.present[blk/64]&(1<<(blk%64)) != 0 }
func (c *COW) mark(blk int64)     { c.present[blk/64] |= 1 << (blk % 64) }

// runs calls fn for each maximal run of blocks in [off, off+n) that are all
// in the overlay or all in the base. Callers hold c.mu.
func (c *COW) runs(off, n int64, fn func(off, n int64, inOverlay bool) error) error {
	end := off + n
	for off < end {
		blk := off >> cowBlockShift
		in := c.has(blk)
		next := (blk + 1) << cowBlockShift
		for next < end && c.has(next>>cowBlockShift) == in {
			next += cowBlock
		}
		next = min(next, end)
		if err := fn(off, next-off, in); err != nil {
			return err
		}
		off = next
	}
	return nil
}

// ReadAt implements io.ReaderAt.
func (c *COW) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange(c.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	err := c.runs(off, int64(len(p)), func(o, n int64, in bool) error {
		dst := p[o-off : o-off+n]
		if in {
			_, err := c.over.ReadAt(dst, o)
			return err
		}
		_, err := c.base.ReadAt(dst, o)
		return err
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// claim copies the partly covered blocks at the edges of [off, off+n) into
// the overlay and marks every block of the range as held there.
func (c *COW) claim(off, n int64) error {
	first, last := off>>cowBlockShift, (off+n-1)>>cowBlockShift
	for _, blk := range []int64{first, last} {
		bo := blk << cowBlockShift
		whole := bo >= off && bo+cowBlock <= off+n
		if c.has(blk) || whole {
			continue
		}
		buf := make([]byte, min(cowBlock, c.Size()-bo))
		if _, err := c.base.ReadAt(buf, bo); err != nil {
			return err
		}
		if _, err := c.over.WriteAt(buf, bo); err != nil {
			return err
		}
		c.mark(blk)
	}
	for blk := first; blk <= last; blk++ {
		c.mark(blk)
	}
	return nil
}

// WriteAt implements io.WriterAt; only the overlay is written.
func (c *COW) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange(c.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.claim(off, int64(len(p))); err != nil {
		return 0, err
	}
	return c.over.WriteAt(p, off)
}

// Trim implements Trimmer.
func (c *COW) Trim(off, n int64) error { return c.Zero(off, n, ZeroFlags{}) }

// Zero implements Zeroer; it only touches the overlay, so it is always fast.
func (c *COW) Zero(off, n int64, flags ZeroFlags) error {
	if err := checkRange(c.Size(), off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.claim(off, n); err != nil {
		return err
	}
	return c.over.Zero(off, n, flags)
}

// Extents implements Extenter: overlay blocks as the overlay reports them,
// the rest as the base does.
func (c *COW) Extents(off, n int64) ([]Extent, error) {
	if err := checkRange(c.Size(), off, n); err != nil {
		return nil, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []Extent
	err := c.runs(off, n, func(o, l int64, in bool) error {
		ext, err := extentsOf(c.base, o, l)
		if in {
			ext, err = c.over.Extents(o, l)
		}
		if err != nil {
			return err
		}
		for _, e := range ext {
			out = appendExtent(out, e.Length, e.Flags)
		}
		if covered := sumExtents(ext); covered < l {
			return errStopExtents
		}
		return nil
	})
	if err != nil && err != errStopExtents {
		return nil, err
	}
	return out, nil
}

type stopExtents struct{}

func (stopExtents) Error() string { return "stop" }

var errStopExtents error = stopExtents{}

func sumExtents(ext []Extent) int64 {
	var s int64
	for _, e := range ext {
		s += e.Length
	}
	return s
}

// extentsOf asks b for extents, or reports the range as data if b cannot.
func extentsOf(b Backend, off, n int64) ([]Extent, error) {
	if e, ok := b.(Extenter); ok {
		return e.Extents(off, n)
	}
	return []Extent{{Length: n}}, nil
}
