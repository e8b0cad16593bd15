package qcow2

import (
	"fmt"
	"strings"
)

// Check: what a writer could trip on. Writing allocates clusters by their
// refcounts, so an image whose refcounts say less than its tables (a
// cluster referenced twice but counted once, a cluster referenced but
// counted free) would have a live cluster handed out again and two guest
// offsets cross-linked; and an image cut short (a copy that stopped, a
// disk that filled) references clusters that are no longer in the file,
// which a write at the end of the file would overlay. A writable open
// walks every table first and refuses such an image.

// maxProblems bounds the problems a Report lists (it counts them all).
const maxProblems = 3

// Report is what Check found.
type Report struct {
	// Corruptions are problems a write could make worse: references
	// past the end of the file, misaligned or overlapping tables,
	// refcounts lower than the references.
	Corruptions int
	// Leaks are clusters counted but not referenced: harmless, space
	// that qemu-img check -r leaks would give back.
	Leaks int
	// Problems describe the first corruptions found.
	Problems []string
	// end is the first cluster past everything referenced or counted.
	end int64
}

func (r *Report) corrupt(format string, args ...any) {
	r.Corruptions++
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// Err is nil for an image without corruptions, else an error that names
// the first problems and how to repair the image.
func (r *Report) Err(path string) error {
	if r.Corruptions == 0 {
		return nil
	}
	more := ""
	if r.Corruptions > len(r.Problems) {
		more = fmt.Sprintf("; and %d more", r.Corruptions-len(r.Problems))
	}
	return fmt.Errorf("the image is damaged (%d problems: %s%s), and writing to it could overwrite data it still points at; "+
		"check and repair it with qemu-img check -r all %s (a truncated image keeps its lost clusters lost), or open it read-only",
		r.Corruptions, strings.Join(r.Problems, "; "), more, path)
}

// Check walks the image's header, L1 and L2 tables and refcount tables and
// compares what references each cluster with its refcount, as qemu-img
// check does. It reads the whole metadata: a table per 2^(2*cluster_bits-3)
// bytes of disk.
func (img *Image) Check() (*Report, error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	w := img.w
	if w == nil {
		var err error
		if w, err = newRefcounts(img); err != nil {
			return nil, err
		}
	}
	return w.check()
}

// use names what references a cluster, formatted only for a problem: a
// writable open walks every L2 entry, and a string for each would cost
// more than the walk.
type use struct {
	what string
	at   int64 // an index (hex false) or a guest offset (hex true); -1 for none
	hex  bool
}

func (u use) String() string {
	switch {
	case u.at < 0:
		return u.what
	case u.hex:
		return fmt.Sprintf("%s %#x", u.what, u.at)
	}
	return fmt.Sprintf("%s %d", u.what, u.at)
}

func (w *writer) check() (*Report, error) {
	img := w.img
	h := img.hdr
	cs := h.ClusterSize()
	fileClusters := (img.fileSize + cs - 1) / cs
	r := &Report{end: fileClusters}
	refs := make([]uint16, fileClusters)
	// ref counts n clusters from byte off, referenced by u; tail allows
	// the last cluster past the end of the file (the rounded-up length of
	// compressed data).
	ref := func(off, n int64, u use, tail bool) {
		if off < 0 {
			r.corrupt("%s at byte %#x lies past the end of the %d-byte file", u, uint64(off), img.fileSize)
			return
		}
		if off%cs != 0 && !tail {
			r.corrupt("%s at byte %#x is not cluster-aligned", u, off)
			return
		}
		first := off / cs
		for c := first; c < first+n; c++ {
			if c >= fileClusters {
				if !(tail && c > first) {
					r.corrupt("%s at byte %#x lies past the end of the %d-byte file", u, c*cs, img.fileSize)
				}
				r.end = max(r.end, c+1)
				continue
			}
			if refs[c] < 1<<16-1 {
				refs[c]++
			}
		}
	}
	// copied checks that an entry pointing at cluster off/cs carries the
	// copied flag exactly when the cluster's refcount is 1 (a refcount
	// that cannot be read is told elsewhere).
	copied := func(off int64, set bool, u use) {
		if off%cs != 0 || off >= img.fileSize {
			return
		}
		if rc, err := w.refcount(off / cs); err == nil && rc > 0 && (rc == 1) != set {
			r.corrupt("%s (cluster %d, refcount %d) has the copied flag %s", u, off/cs, rc, map[bool]string{true: "set", false: "clear"}[set])
		}
	}
	if h.SnapshotsOffset%uint64(cs) != 0 {
		r.corrupt("the snapshot table offset %#x is not cluster-aligned", h.SnapshotsOffset)
	}
	ref(0, 1, use{"the header", -1, false}, false)
	ref(int64(h.L1Offset), (int64(h.L1Size)*8+cs-1)/cs, use{"the L1 table", -1, false}, false)
	ref(int64(h.RefcountOffset), int64(h.RefcountCluster), use{"the refcount table", -1, false}, false)
	for ti, e := range w.rtable {
		if e&refBlockReserved != 0 {
			r.corrupt("refcount table entry %d (%#x) has reserved bits set", ti, e)
		}
		if off := int64(e &^ refBlockReserved); off != 0 {
			ref(off, 1, use{"refcount block", int64(ti), false}, false)
			if off%cs == 0 && off < img.fileSize && off+cs > img.fileSize {
				r.corrupt("refcount block %d at byte %#x is cut short by the end of the %d-byte file", ti, off, img.fileSize)
			}
		}
	}
	for l1i, e := range img.l1 {
		off := int64(e & offsetMask)
		if e&^(offsetMask|flagCopied) != 0 {
			r.corrupt("L1 entry %d (%#x) has reserved bits set", l1i, e)
		}
		if off == 0 {
			if e != 0 {
				// QEMU reads such an entry as an L2 table at byte 0.
				r.corrupt("L1 entry %d (%#x) has flags but no L2 table", l1i, e)
			}
			continue
		}
		table := use{"the L2 table of L1 entry", int64(l1i), false}
		ref(off, 1, table, false)
		if off%cs != 0 || off+cs > img.fileSize {
			if off%cs == 0 && off < img.fileSize {
				r.corrupt("%s at byte %#x is cut short by the end of the %d-byte file", table, off, img.fileSize)
			}
			continue
		}
		copied(off, e&flagCopied != 0, table)
		t, err := img.readTable(uint64(off), h.l2Entries(), table.String())
		if err != nil {
			return nil, err
		}
		for l2i, e := range t {
			if e == 0 {
				continue
			}
			guest := (int64(l1i)*h.l2Entries() + int64(l2i)) * cs
			data := use{"the data of guest offset", guest, true}
			reserved := e &^ (offsetMask | flagCopied | flagZero)
			if h.Version < 3 {
				reserved = e &^ (offsetMask | flagCopied)
			}
			switch host := int64(e & offsetMask); {
			case e&flagComp == 0 && reserved != 0:
				r.corrupt("the L2 entry of guest offset %#x (%#x) has reserved bits set", guest, e)
			case e&flagComp != 0:
				if e&flagCopied != 0 {
					r.corrupt("the compressed %s has the copied flag", data)
				}
				w.refCompressed(e, use{"the compressed data of guest offset", guest, true}, ref)
			case host != 0:
				ref(host, 1, data, false)
				copied(host, e&flagCopied != 0, data)
			}
		}
	}
	// Refcounts against references.
	for ti := range w.rtable {
		off := int64(w.rtable[ti] &^ refBlockReserved)
		if off == 0 {
			continue
		}
		if off < 0 || off%cs != 0 || off+cs > img.fileSize {
			continue // told above
		}
		b, err := w.block(int64(ti))
		if err != nil {
			return nil, err
		}
		for i := range w.perBlock {
			c := int64(ti)*w.perBlock + i
			rc := w.get(b, i)
			if rc == 0 {
				continue
			}
			r.end = max(r.end, c+1)
			if c >= fileClusters {
				continue // counted but gone: a leak, nothing points there
			}
			switch {
			case rc < uint64(refs[c]):
				r.corrupt("cluster %d (byte %#x) has refcount %d but %d references", c, c*cs, rc, refs[c])
			case rc > uint64(refs[c]):
				r.Leaks++
			}
			refs[c] = 0
		}
	}
	for c, n := range refs {
		if n > 0 {
			r.corrupt("cluster %d (byte %#x) has %d references but refcount 0", c, int64(c)*cs, n)
		}
	}
	return r, nil
}

// refCompressed counts the clusters compressed L2 entry e's data touches.
func (w *writer) refCompressed(e uint64, u use, ref func(off, n int64, u use, tail bool)) {
	h := w.img.hdr
	cs := h.ClusterSize()
	x := 62 - (h.ClusterBits - 8)
	host := int64(e & (1<<x - 1))
	sectors := int64(e>>x) & (1<<(62-x) - 1)
	span := (sectors+1)*512 - host%512
	first := host / cs
	ref(first*cs, (host+span-1)/cs-first+1, u, true)
}
