package qcow2

import (
	"bytes"
	"compress/flate"
	"fmt"
	"io"
)

const (
	offsetMask = 0x00fffffffffffe00 // bits 9-55: a host offset in an L1 or L2 entry
	flagCopied = 1 << 63
	flagComp   = 1 << 62
	flagZero   = 1 << 0
)

// kind is what a guest cluster is.
type kind int

const (
	unallocated kind = iota // read from the backing file, or zeroes
	zeroed                  // the zero flag: reads as zeroes
	normal                  // data at host
	compressed              // deflate data at host, clen bytes
)

// mapping is where a guest cluster's data is.
type mapping struct {
	kind kind
	host int64 // normal: the cluster's offset in the file; compressed: the data's
	clen int64 // compressed: the most bytes the data can take, within the file
	span int64 // compressed: the bytes its refcounts cover
}

// lookup maps the guest cluster that holds off.
func (img *Image) lookup(off int64) (mapping, error) {
	h := img.hdr
	vc := off >> h.ClusterBits
	l1i, l2i := vc/h.l2Entries(), vc%h.l2Entries()
	if l1i >= int64(len(img.l1)) {
		return mapping{}, nil
	}
	l2off := img.l1[l1i] & offsetMask
	if l2off == 0 {
		return mapping{}, nil
	}
	l2, err := img.l2Table(l2off)
	if err != nil {
		return mapping{}, err
	}
	return img.decode(l2[l2i])
}

// l2Table returns the L2 table at off, from the cache or the file.
func (img *Image) l2Table(off uint64) ([]uint64, error) {
	if t, ok := img.cache.get(off); ok {
		return t, nil
	}
	if off%uint64(img.hdr.ClusterSize()) != 0 {
		return nil, fmt.Errorf("L2 table at byte %d is not cluster-aligned", off)
	}
	t, err := img.readTable(off, img.hdr.l2Entries(), "L2 table")
	if err != nil {
		return nil, err
	}
	img.cache.put(off, t)
	return t, nil
}

// decode reads an L2 entry.
func (img *Image) decode(e uint64) (mapping, error) {
	h := img.hdr
	if e&flagComp != 0 {
		x := 62 - (h.ClusterBits - 8)
		host := int64(e & (1<<x - 1))
		sectors := int64(e>>x) & (1<<(62-x) - 1)
		clen := (sectors+1)*512 - host%512
		if host >= img.fileSize {
			return mapping{}, fmt.Errorf("compressed cluster at byte %d lies outside the %d-byte file", host, img.fileSize)
		}
		return mapping{kind: compressed, host: host, clen: min(clen, img.fileSize-host), span: clen}, nil
	}
	if h.Version >= 3 && e&flagZero != 0 {
		return mapping{kind: zeroed, host: int64(e & offsetMask)}, nil
	}
	host := int64(e & offsetMask)
	if e&^(offsetMask|flagCopied|flagZero) != 0 {
		return mapping{}, fmt.Errorf("L2 entry %#016x has reserved bits set", e)
	}
	if host == 0 {
		return mapping{}, nil
	}
	if host%h.ClusterSize() != 0 {
		return mapping{}, fmt.Errorf("data cluster at byte %d is not cluster-aligned", host)
	}
	if host >= img.fileSize {
		return mapping{}, fmt.Errorf("data cluster at byte %d lies outside the %d-byte file", host, img.fileSize)
	}
	return mapping{kind: normal, host: host}, nil
}

// ReadAt reads the virtual disk. It returns io.EOF for a read that ends
// past the disk's end, having read what lies before it.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("qcow2: read at negative offset %d", off)
	}
	size := img.Size()
	var eof error
	if off >= size {
		return 0, io.EOF
	}
	if int64(len(p)) > size-off {
		p, eof = p[:size-off], io.EOF
	}
	img.mu.RLock()
	defer img.mu.RUnlock()
	cs := img.hdr.ClusterSize()
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		in := pos & (cs - 1)
		chunk := p[done:min(len(p), done+int(cs-in))]
		m, err := img.lookup(pos)
		if err != nil {
			return done, fmt.Errorf("qcow2 %s: guest offset %d: %w", img.path, pos, err)
		}
		if err := img.readMapped(chunk, pos, in, m); err != nil {
			return done, fmt.Errorf("qcow2 %s: guest offset %d: %w", img.path, pos, err)
		}
		done += len(chunk)
	}
	return done, eof
}

// readMapped fills chunk, which starts in bytes into the guest cluster
// that m maps, at guest offset pos.
func (img *Image) readMapped(chunk []byte, pos, in int64, m mapping) error {
	switch m.kind {
	case zeroed:
		clear(chunk)
	case unallocated:
		return img.readBacking(chunk, pos)
	case normal:
		n, err := img.f.ReadAt(chunk, m.host+in)
		if err == io.EOF {
			clear(chunk[n:]) // a cluster the file ends inside of reads as zeroes past its end
			err = nil
		}
		return err
	case compressed:
		c, err := img.decompress(m)
		if err != nil {
			return err
		}
		copy(chunk, c[in:])
	}
	return nil
}

// readBacking reads guest bytes that are not allocated here: from the
// backing file where it has them, zeroes past its end.
func (img *Image) readBacking(chunk []byte, pos int64) error {
	if img.backing == nil {
		clear(chunk)
		return nil
	}
	bs := img.backing.Size()
	n := 0
	if pos < bs {
		n = int(min(int64(len(chunk)), bs-pos))
		if m, err := img.backing.ReadAt(chunk[:n], pos); err != nil && !(err == io.EOF && m == n) {
			return fmt.Errorf("backing file: %w", err)
		}
	}
	clear(chunk[n:])
	return nil
}

// decompress inflates a compressed cluster, which must yield a whole
// cluster.
func (img *Image) decompress(m mapping) ([]byte, error) {
	src := make([]byte, m.clen)
	n, err := img.f.ReadAt(src, m.host)
	if err != nil && err != io.EOF {
		return nil, err
	}
	out := make([]byte, img.hdr.ClusterSize())
	r := flate.NewReader(bytes.NewReader(src[:n]))
	defer r.Close()
	if _, err := io.ReadFull(r, out); err != nil {
		return nil, fmt.Errorf("compressed cluster at byte %d: deflate: %w", m.host, err)
	}
	return out, nil
}
