package qcow2

import (
	"encoding/binary"
	"fmt"
)

// Refcounts: the two-level table that says how many references each host
// cluster has. The writer keeps the table and the blocks it has touched
// in memory and writes them back on sync, before the L2 tables that
// depend on them.

// refBlockReserved are the bits of a refcount table entry that are not
// the block's offset: bits 9-63 are.
const refBlockReserved = 511

// refcount returns the refcount of host cluster c.
func (w *writer) refcount(c int64) (uint64, error) {
	ti := c / w.perBlock
	if ti >= int64(len(w.rtable)) || w.rtable[ti] == 0 {
		return 0, nil
	}
	b, err := w.block(ti)
	if err != nil {
		return 0, err
	}
	return w.get(b, c%w.perBlock), nil
}

// setRefcount sets the refcount of host cluster c, allocating a refcount
// block (and growing the table) where c has none.
func (w *writer) setRefcount(c int64, v uint64) error {
	if v > w.maxRef {
		return fmt.Errorf("refcount of cluster %d would exceed %d", c, w.maxRef)
	}
	ti := c / w.perBlock
	if ti >= int64(len(w.rtable)) {
		if err := w.growTable(ti + 1); err != nil {
			return err
		}
	}
	if w.rtable[ti] == 0 {
		if err := w.newBlock(ti); err != nil {
			return err
		}
	}
	b, err := w.block(ti)
	if err != nil {
		return err
	}
	w.put(b, c%w.perBlock, v)
	w.dirtyBlocks[ti] = true
	return nil
}

// block returns refcount block ti, read from the file on first use.
func (w *writer) block(ti int64) ([]byte, error) {
	if b, ok := w.blocks[ti]; ok {
		return b, nil
	}
	off := w.rtable[ti] &^ refBlockReserved
	cs := w.img.hdr.ClusterSize()
	if int64(off)%cs != 0 || int64(off)+cs > w.img.fileSize {
		return nil, fmt.Errorf("refcount block %d at byte %d is misaligned or outside the file", ti, off)
	}
	b := make([]byte, cs)
	if _, err := w.img.f.ReadAt(b, int64(off)); err != nil {
		return nil, fmt.Errorf("read refcount block %d: %w", ti, err)
	}
	w.blocks[ti] = b
	return b, nil
}

// newBlock makes refcount block ti at the end of the file; the block
// counts itself when it falls in its own range.
func (w *writer) newBlock(ti int64) error {
	c := w.end
	w.end++
	w.blocks[ti] = make([]byte, w.img.hdr.ClusterSize())
	w.dirtyBlocks[ti] = true
	w.rtable[ti] = uint64(c * w.img.hdr.ClusterSize())
	w.rtableDirty = true
	return w.setRefcount(c, 1)
}

// growTable moves the refcount table to the end of the file, large enough
// for need entries (twice as large at least). The header points at the
// new table on the next sync; the old one is freed after that.
func (w *writer) growTable(need int64) error {
	cs := w.img.hdr.ClusterSize()
	perCluster := cs / 8
	n := max(need, 2*int64(len(w.rtable)))
	clusters := (n + perCluster - 1) / perCluster
	// The new table and the blocks that count it must be covered by it.
	for (w.end+clusters+clusters)/w.perBlock+1 > clusters*perCluster {
		clusters++
	}
	t := make([]uint64, clusters*perCluster)
	copy(t, w.rtable)
	if !w.rtableMoved {
		w.oldTable, w.oldTableClusters = w.img.hdr.RefcountOffset, int64(w.img.hdr.RefcountCluster)
	} else {
		w.pendingFree = append(w.pendingFree, clusterRange(int64(w.rtableOff)/cs, int64(len(w.rtable))/perCluster)...)
	}
	start := w.end
	w.end += clusters
	w.rtable, w.rtableOff = t, uint64(start*cs)
	w.rtableDirty, w.rtableMoved = true, true
	for c := start; c < start+clusters; c++ {
		if err := w.setRefcount(c, 1); err != nil {
			return err
		}
	}
	return nil
}

func clusterRange(first, n int64) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = first + int64(i)
	}
	return out
}

// get reads entry i of a refcount block: refcount_bits wide, big-endian
// for whole bytes, the least significant bits first within a byte.
func (w *writer) get(b []byte, i int64) uint64 {
	switch bits := w.bits; {
	case bits < 8:
		bit := i * int64(bits)
		return uint64(b[bit/8]>>(bit%8)) & (1<<bits - 1)
	case bits == 8:
		return uint64(b[i])
	case bits == 16:
		return uint64(binary.BigEndian.Uint16(b[i*2:]))
	case bits == 32:
		return uint64(binary.BigEndian.Uint32(b[i*4:]))
	default:
		return binary.BigEndian.Uint64(b[i*8:])
	}
}

func (w *writer) put(b []byte, i int64, v uint64) {
	switch bits := w.bits; {
	case bits < 8:
		bit := i * int64(bits)
		mask := byte(1<<bits-1) << (bit % 8)
		b[bit/8] = b[bit/8]&^mask | byte(v)<<(bit%8)&mask
	case bits == 8:
		b[i] = byte(v)
	case bits == 16:
		binary.BigEndian.PutUint16(b[i*2:], uint16(v))
	case bits == 32:
		binary.BigEndian.PutUint32(b[i*4:], uint32(v))
	default:
		binary.BigEndian.PutUint64(b[i*8:], v)
	}
}
