package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Writing. Data goes to the file at once; metadata (refcount blocks, the
// refcount table, L2 tables, the L1 table) changes in memory and is
// written back by Sync in an order that leaves the image consistent after
// a crash at any point: a cluster is counted before anything on disk
// points at it, and is uncounted only after nothing on disk does. A crash
// can leak clusters (counted, unused); it cannot make a cluster used twice
// or an L2 entry point at uncounted space.
//
// Sync:
//  1. refcount blocks, fsync (this also makes the data durable); the
//     refcount table if it changed, fsync; the header if the table
//     moved, fsync;
//  2. L2 tables, fsync; the L1 table if it changed, fsync;
//  3. the clusters released since the last sync are uncounted, and only
//     then can they be reused; their refcount blocks are written, fsync.

// writer is the write state of an image opened writable.
type writer struct {
	img      *Image
	bits     uint   // refcount_bits
	maxRef   uint64 // the largest refcount
	perBlock int64  // refcounts in a block

	rtable           []uint64
	rtableOff        uint64
	rtableDirty      bool
	rtableMoved      bool
	oldTable         uint64 // the table the header points at, until it moves
	oldTableClusters int64

	blocks      map[int64][]byte // refcount blocks by table index
	dirtyBlocks map[int64]bool

	end         int64   // the first cluster past the end of the file
	hint        int64   // no free cluster lies before it
	pendingFree []int64 // clusters to uncount after the next sync
	l1Dirty     bool
	maxDirty    int // dirty L2 tables that force a sync
}

// newWriter checks that img can be written: not dirty, not marked
// corrupt, no internal snapshots, and no damage Check finds.
func newWriter(img *Image) (*writer, error) {
	h := img.hdr
	switch {
	case h.Incompatible&IncompatDirty != 0:
		return nil, errors.New("the image is dirty (lazy refcounts, not closed cleanly): its refcounts cannot be trusted; repair it with qemu-img check -r all, or open it read-only")
	case h.Incompatible&IncompatCorrupt != 0:
		return nil, errors.New("the image is marked corrupt: repair it with qemu-img check -r all, or open it read-only")
	case h.NbSnapshots > 0:
		return nil, fmt.Errorf("the image has %d internal snapshots: writing would have to copy clusters they share, which is not done; open it read-only", h.NbSnapshots)
	}
	w, err := newRefcounts(img)
	if err != nil {
		return nil, err
	}
	r, err := w.check()
	if err != nil {
		return nil, fmt.Errorf("check the image before writing: %w", err)
	}
	if err := r.Err(img.path); err != nil {
		return nil, err
	}
	// Allocation goes by refcounts: nothing counted or referenced lies
	// at or past end, whatever the file's size.
	w.end = max(w.end, r.end)
	if h.Autoclear != 0 {
		// Autoclear features (persistent bitmaps) are not kept up to
		// date here: their bits must be cleared before the first write.
		var b [8]byte
		if _, err := img.f.WriteAt(b[:], 88); err != nil {
			return nil, fmt.Errorf("clear the autoclear features: %w", err)
		}
		if err := img.f.Sync(); err != nil {
			return nil, err
		}
		h.Autoclear = 0
	}
	return w, nil
}

// newRefcounts reads img's refcount table into a writer's state, which
// writing and Check share.
func newRefcounts(img *Image) (*writer, error) {
	h := img.hdr
	cs := h.ClusterSize()
	w := &writer{img: img, bits: 1 << h.RefcountOrder, blocks: map[int64][]byte{}, dirtyBlocks: map[int64]bool{},
		end: (img.fileSize + cs - 1) / cs, rtableOff: h.RefcountOffset, oldTable: h.RefcountOffset, oldTableClusters: int64(h.RefcountCluster)}
	w.maxRef = 1<<w.bits - 1
	if w.bits == 64 {
		w.maxRef = 1<<64 - 1
	}
	w.perBlock = cs * 8 / int64(w.bits)
	w.maxDirty = max(1, img.cache.max/2)
	var err error
	if w.rtable, err = img.readTable(h.RefcountOffset, int64(h.RefcountCluster)*cs/8, "refcount table"); err != nil {
		return nil, err
	}
	return w, nil
}

// errReadOnly is what a write to an image opened read-only gets.
var errReadOnly = errors.New("qcow2: the image is open read-only")

// allocate counts a free cluster and returns it: the first with no
// references, or a new one at the end of the file.
func (w *writer) allocate() (int64, error) {
	for c := w.hint; c < w.end; c++ {
		rc, err := w.refcount(c)
		if err != nil {
			return 0, err
		}
		if rc == 0 {
			w.hint = c + 1
			return c, w.setRefcount(c, 1)
		}
	}
	c := w.end
	w.end++
	w.hint = w.end
	return c, w.setRefcount(c, 1)
}

// release schedules the clusters a mapping held for uncounting.
func (w *writer) release(m mapping) {
	cs := w.img.hdr.ClusterSize()
	switch {
	case m.kind == compressed:
		for c := m.host / cs; c <= (m.host+m.span-1)/cs; c++ {
			w.pendingFree = append(w.pendingFree, c)
		}
	case m.host != 0: // data, or a preallocated zero cluster
		w.pendingFree = append(w.pendingFree, m.host/cs)
	}
}

// l2For returns the L2 table that maps guest cluster vc and the index in
// it, making a new table when the L1 entry is empty.
func (w *writer) l2For(vc int64) ([]uint64, uint64, int64, error) {
	img := w.img
	h := img.hdr
	l1i, l2i := vc/h.l2Entries(), vc%h.l2Entries()
	off := img.l1[l1i] & offsetMask
	if off == 0 {
		c, err := w.allocate()
		if err != nil {
			return nil, 0, 0, err
		}
		off = uint64(c * h.ClusterSize())
		t := make([]uint64, h.l2Entries())
		img.cache.put(off, t)
		img.cache.markDirty(off)
		img.l1[l1i] = off | flagCopied
		w.l1Dirty = true
		return t, off, l2i, nil
	}
	if rc, err := w.refcount(int64(off) / h.ClusterSize()); err != nil {
		return nil, 0, 0, err
	} else if rc != 1 {
		return nil, 0, 0, fmt.Errorf("L2 table at byte %d has %d references (shared with a snapshot?); it is not written", off, rc)
	}
	t, err := img.l2Table(off)
	return t, off, l2i, err
}

// setEntry changes the L2 entry of guest cluster vc.
func (w *writer) setEntry(vc int64, e uint64) error {
	t, off, i, err := w.l2For(vc)
	if err != nil {
		return err
	}
	t[i] = e
	w.img.cache.markDirty(off)
	return nil
}

// WriteAt writes p at off of the virtual disk.
func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	if img.w == nil {
		return 0, errReadOnly
	}
	if off < 0 || off > img.Size() || int64(len(p)) > img.Size()-off {
		return 0, fmt.Errorf("qcow2: write of %d bytes at %d past the %d-byte disk", len(p), off, img.Size())
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	cs := img.hdr.ClusterSize()
	for done := 0; done < len(p); {
		pos := off + int64(done)
		in := pos & (cs - 1)
		chunk := p[done:min(len(p), done+int(cs-in))]
		if err := img.writeCluster(pos-in, in, chunk); err != nil {
			return done, fmt.Errorf("qcow2 %s: write at guest offset %d: %w", img.path, pos, err)
		}
		done += len(chunk)
	}
	return len(p), img.bound()
}

// writeCluster writes chunk at in bytes into the guest cluster at vpos:
// in place where the cluster is data of its own, else into a newly
// allocated cluster, with the rest of the cluster copied from what it
// read before (the backing file, zeroes, compressed data).
func (img *Image) writeCluster(vpos, in int64, chunk []byte) error {
	w := img.w
	cs := img.hdr.ClusterSize()
	m, err := img.lookup(vpos)
	if err != nil {
		return err
	}
	if m.kind == normal {
		rc, err := w.refcount(m.host / cs)
		if err != nil {
			return err
		}
		if rc == 1 {
			_, err := img.f.WriteAt(chunk, m.host+in)
			return err
		}
	}
	buf := chunk
	if int64(len(chunk)) < cs {
		buf = make([]byte, cs)
		if err := img.readMapped(buf, vpos, 0, m); err != nil {
			return err
		}
		copy(buf[in:], chunk)
	}
	c, err := w.allocate()
	if err != nil {
		return err
	}
	if _, err := img.f.WriteAt(buf, c*cs); err != nil {
		return err
	}
	if c*cs+cs > img.fileSize {
		img.fileSize = c*cs + cs
	}
	if err := w.setEntry(vpos/cs, uint64(c*cs)|flagCopied); err != nil {
		return err
	}
	w.release(m)
	return nil
}

// bound writes the metadata back when too many L2 tables wait.
func (img *Image) bound() error {
	if img.cache.dirtyCount() > img.w.maxDirty {
		return img.syncLocked()
	}
	return nil
}

// Zero makes [off, off+n) read as zeroes: whole clusters by the zero flag
// (version 3) or by dropping them (nothing under them), the rest by
// writing zeroes. With keep, data clusters of the image's own stay
// allocated (NBD_CMD_FLAG_NO_HOLE).
func (img *Image) Zero(off, n int64, keep bool) error {
	return img.discard(off, n, keep, false)
}

// Trim discards [off, off+n), which then reads as zeroes.
func (img *Image) Trim(off, n int64) error {
	return img.discard(off, n, false, true)
}

func (img *Image) discard(off, n int64, keep, trim bool) error {
	if img.w == nil {
		return errReadOnly
	}
	if off < 0 || n < 0 || off > img.Size() || n > img.Size()-off {
		return fmt.Errorf("qcow2: zero %d bytes at %d past the %d-byte disk", n, off, img.Size())
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	cs := img.hdr.ClusterSize()
	for pos, end := off, off+n; pos < end; {
		in := pos & (cs - 1)
		next := min(end, pos-in+cs)
		var err error
		if in != 0 || next-pos < cs {
			err = img.writeCluster(pos-in, in, make([]byte, next-pos))
		} else {
			err = img.zeroCluster(pos, keep)
		}
		if err != nil {
			return fmt.Errorf("qcow2 %s: zero at guest offset %d: %w", img.path, pos, err)
		}
		pos = next
	}
	return img.bound()
}

// zeroCluster makes the guest cluster at vpos read as zeroes.
func (img *Image) zeroCluster(vpos int64, keep bool) error {
	w := img.w
	cs := img.hdr.ClusterSize()
	m, err := img.lookup(vpos)
	if err != nil {
		return err
	}
	if img.hdr.Version < 3 {
		if m.kind == unallocated && img.backing == nil {
			return nil // reads as zeroes already
		}
		return img.writeCluster(vpos, 0, make([]byte, cs))
	}
	switch {
	case m.kind == unallocated && img.backing == nil:
		return nil
	case m.kind == zeroed && (m.host == 0 || keep):
		return nil
	case keep && m.kind == normal:
		rc, err := w.refcount(m.host / cs)
		if err != nil {
			return err
		}
		if rc == 1 {
			return w.setEntry(vpos/cs, uint64(m.host)|flagCopied|flagZero)
		}
	}
	e := uint64(flagZero)
	if img.backing == nil && !keep {
		e = 0 // unallocated reads as zeroes too, and frees the L2 entry's meaning
	}
	if err := w.setEntry(vpos/cs, e); err != nil {
		return err
	}
	w.release(m)
	return nil
}

// Sync makes every completed write durable, metadata included, in the
// order that keeps the image consistent (see the top of this file).
func (img *Image) Sync() error {
	if img.w == nil {
		return nil
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.syncLocked()
}

func (img *Image) syncLocked() error {
	w := img.w
	f := img.f
	cs := img.hdr.ClusterSize()
	if err := w.writeBlocks(); err != nil {
		return err
	}
	if w.rtableDirty {
		if _, err := f.WriteAt(encodeTable(w.rtable), int64(w.rtableOff)); err != nil {
			return fmt.Errorf("qcow2 %s: write refcount table: %w", img.path, err)
		}
		if err := f.Sync(); err != nil {
			return err
		}
		w.rtableDirty = false
	}
	if w.rtableMoved {
		var b [12]byte
		binary.BigEndian.PutUint64(b[:], w.rtableOff)
		binary.BigEndian.PutUint32(b[8:], uint32(int64(len(w.rtable))*8/cs))
		if _, err := f.WriteAt(b[:], 48); err != nil {
			return fmt.Errorf("qcow2 %s: write header: %w", img.path, err)
		}
		if err := f.Sync(); err != nil {
			return err
		}
		img.hdr.RefcountOffset, img.hdr.RefcountCluster = w.rtableOff, uint32(int64(len(w.rtable))*8/cs)
		w.pendingFree = append(w.pendingFree, clusterRange(int64(w.oldTable)/cs, w.oldTableClusters)...)
		w.oldTable, w.oldTableClusters = w.rtableOff, int64(img.hdr.RefcountCluster)
		w.rtableMoved = false
	}
	wrote := false
	err := img.cache.writeBack(func(off uint64, t []uint64) error {
		wrote = true
		_, err := f.WriteAt(encodeTable(t), int64(off))
		return err
	})
	if err != nil {
		return fmt.Errorf("qcow2 %s: write L2 table: %w", img.path, err)
	}
	if wrote {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if w.l1Dirty {
		if _, err := f.WriteAt(encodeTable(img.l1), int64(img.hdr.L1Offset)); err != nil {
			return fmt.Errorf("qcow2 %s: write L1 table: %w", img.path, err)
		}
		if err := f.Sync(); err != nil {
			return err
		}
		w.l1Dirty = false
	}
	if n, err := sizeOf(f); err == nil {
		img.fileSize = n
	}
	for _, c := range w.pendingFree {
		rc, err := w.refcount(c)
		if err != nil {
			return err
		}
		if rc == 0 {
			return fmt.Errorf("qcow2 %s: cluster %d released with no references", img.path, c)
		}
		if err := w.setRefcount(c, rc-1); err != nil {
			return err
		}
		if rc == 1 {
			w.hint = min(w.hint, c)
		}
	}
	freed := len(w.pendingFree) > 0
	w.pendingFree = w.pendingFree[:0]
	if freed {
		// Not needed for consistency (a crash here only leaks), but a
		// closed image should leak nothing.
		return w.writeBlocks()
	}
	return nil
}

// writeBlocks writes the dirty refcount blocks and fsyncs.
func (w *writer) writeBlocks() error {
	img := w.img
	cs := img.hdr.ClusterSize()
	for ti := range w.dirtyBlocks {
		off := int64(w.rtable[ti] &^ refBlockReserved)
		if _, err := img.f.WriteAt(w.blocks[ti], off); err != nil {
			return fmt.Errorf("qcow2 %s: write refcount block: %w", img.path, err)
		}
		img.fileSize = max(img.fileSize, off+cs)
	}
	clear(w.dirtyBlocks)
	return img.f.Sync()
}

func encodeTable(t []uint64) []byte {
	b := make([]byte, len(t)*8)
	for i, v := range t {
		binary.BigEndian.PutUint64(b[i*8:], v)
	}
	return b
}
