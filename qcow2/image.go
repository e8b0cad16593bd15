package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/nbdlab/nbdlab/imagelock"
)

// maxChain bounds a backing chain, which a malformed image could make
// circular or endless.
const maxChain = 32

// Options configure Open.
type Options struct {
	// CacheBytes bounds the L2 tables held in memory (default 32 MiB, at
	// least one table).
	CacheBytes int64
	// Writable opens the image (not its backing files) for writing.
	Writable bool
	// ForceShare opens a read-only image without QEMU's locks, as
	// qemu-img -U does: it may change under the reader. Without it, the
	// image is locked as QEMU would lock it (package imagelock): a
	// writer is refused while another process reads or writes it, a
	// reader while another writes it; backing files are locked as
	// readers.
	ForceShare bool
}

// Image is an open qcow2 image: an io.ReaderAt over its virtual disk.
// It is safe for concurrent use.
type Image struct {
	hdr      *Header
	path     string
	f        *os.File
	fileSize int64
	l1       []uint64
	cache    *tableCache
	backing  backing // nil without a backing file
	// mu orders reads (shared) against writes (exclusive), which change
	// the tables.
	mu sync.RWMutex
	w  *writer // nil when read-only
}

// backing is the image under an image: raw or qcow2.
type backing interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// Open opens the qcow2 image at path read-only, with its backing chain.
func Open(path string, o Options) (*Image, error) {
	return open(path, o, 0)
}

func open(path string, o Options, depth int) (*Image, error) {
	if o.Writable && o.ForceShare {
		return nil, fmt.Errorf("%s: force-share is for readers: open it read-only", path)
	}
	mode := imagelock.Reader
	switch {
	case o.ForceShare:
		mode = imagelock.ForceShare
	case o.Writable:
		mode = imagelock.Writer
	}
	f, err := openFile(path, mode)
	if err != nil {
		return nil, err
	}
	img, err := newImage(f, path, o, depth)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return img, nil
}

// newImage reads the header, the L1 table and the backing chain of f.
func newImage(f *os.File, path string, o Options, depth int) (*Image, error) {
	size, err := sizeOf(f)
	if err != nil {
		return nil, err
	}
	first := make([]byte, min(size, 1<<maxClusterBits))
	if _, err := f.ReadAt(first, 0); err != nil && err != io.EOF {
		return nil, err
	}
	h, err := ParseHeader(first)
	if err != nil {
		return nil, err
	}
	img := &Image{hdr: h, path: path, f: f, fileSize: size}
	if img.l1, err = img.readTable(h.L1Offset, int64(h.L1Size), "L1 table"); err != nil {
		return nil, err
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = 32 << 20
	}
	img.cache = newTableCache(max(1, int(o.CacheBytes/h.ClusterSize())))
	if h.BackingOffset != 0 {
		if err := img.openBacking(o, depth); err != nil {
			return nil, err
		}
	}
	if o.Writable {
		if img.w, err = newWriter(img); err != nil {
			if img.backing != nil {
				img.backing.Close()
			}
			return nil, err
		}
	}
	return img, nil
}

// readTable reads n big-endian 64-bit entries at off, all inside the file.
func (img *Image) readTable(off uint64, n int64, what string) ([]uint64, error) {
	if n == 0 {
		return nil, nil
	}
	if off == 0 || off > uint64(img.fileSize) || uint64(n)*8 > uint64(img.fileSize)-off {
		return nil, fmt.Errorf("%s of %d entries at byte %d lies outside the %d-byte file", what, n, off, img.fileSize)
	}
	b := make([]byte, n*8)
	if _, err := img.f.ReadAt(b, int64(off)); err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	t := make([]uint64, n)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(b[i*8:])
	}
	return t, nil
}

// openBacking opens the backing file the header names, resolved as QEMU
// does: a relative name is relative to this image's directory.
func (img *Image) openBacking(o Options, depth int) error {
	h := img.hdr
	if depth+1 >= maxChain {
		return fmt.Errorf("backing chain deeper than %d images (a loop?)", maxChain)
	}
	if h.BackingOffset > uint64(img.fileSize) || uint64(h.BackingSize) > uint64(img.fileSize)-h.BackingOffset {
		return fmt.Errorf("backing file name at byte %d lies outside the file", h.BackingOffset)
	}
	name := make([]byte, h.BackingSize)
	if _, err := img.f.ReadAt(name, int64(h.BackingOffset)); err != nil {
		return fmt.Errorf("read backing file name: %w", err)
	}
	p := string(name)
	if p == "" {
		return errors.New("empty backing file name")
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(img.path), p)
	}
	format := h.BackingFormat
	if format == "" {
		format = probe(p)
	}
	var err error
	switch format {
	case "qcow2":
		img.backing, err = open(p, Options{CacheBytes: o.CacheBytes, ForceShare: o.ForceShare}, depth+1)
	case "raw":
		img.backing, err = openRaw(p, o.ForceShare)
	default:
		return fmt.Errorf("backing file %s: format %q is not supported (raw and qcow2 are)", p, format)
	}
	if err != nil {
		return fmt.Errorf("backing file: %w", err)
	}
	return nil
}

// probe guesses a backing file's format from its magic, as QEMU does when
// the image does not name it.
func probe(path string) string {
	if ok, _ := IsImage(path); ok { // an error: the open that follows reports it
		return "qcow2"
	}
	return "raw"
}

// IsImage reports whether the file at path starts with the qcow2 magic;
// the error is the open's.
func IsImage(path string) (bool, error) {
	f, err := openFile(path, imagelock.ForceShare) // a look at the magic takes no lock
	if err != nil {
		return false, err
	}
	defer f.Close()
	var m [4]byte
	_, err = f.ReadAt(m[:], 0)
	return err == nil && string(m[:]) == Magic, nil
}

type rawFile struct {
	*os.File
	size int64
}

func (r *rawFile) Size() int64 { return r.size }

// sizeOf returns the size of a regular file or a block device, whose
// Stat size is 0.
func sizeOf(f *os.File) (int64, error) {
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", f.Name(), err)
	}
	return n, nil
}

// openFile opens a regular file or a block device for mode, with its
// locks (imagelock.Open): an image that names a FIFO or a character
// device as its backing file gets an error, not a read that never
// returns.
func openFile(path string, mode imagelock.Mode) (*os.File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() && st.Mode().Type() != os.ModeDevice {
		return nil, fmt.Errorf("%s is not a regular file or a block device (%s)", path, st.Mode().Type())
	}
	return imagelock.Open(path, mode)
}

func openRaw(path string, forceShare bool) (*rawFile, error) {
	mode := imagelock.Reader
	if forceShare {
		mode = imagelock.ForceShare
	}
	f, err := openFile(path, mode)
	if err != nil {
		return nil, err
	}
	size, err := sizeOf(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &rawFile{f, size}, nil
}

// Header returns the image's header.
func (img *Image) Header() *Header { return img.hdr }

// Size is the virtual disk size in bytes: the header's, rounded down to
// 512-byte sectors as QEMU rounds it.
func (img *Image) Size() int64 { return int64(img.hdr.Size &^ 511) }

// Backing describes the backing chain below the image, nearest first.
func (img *Image) Backing() []string {
	var out []string
	for b := img.backing; b != nil; {
		switch v := b.(type) {
		case *Image:
			out = append(out, v.path+" (qcow2)")
			b = v.backing
		case *rawFile:
			out = append(out, v.Name()+" (raw)")
			b = nil
		}
	}
	return out
}

// Close writes back what the image holds in memory (when writable) and
// closes it and its backing chain.
func (img *Image) Close() error {
	img.mu.Lock()
	defer img.mu.Unlock()
	var err error
	if img.w != nil {
		err = img.syncLocked()
	}
	err = errors.Join(err, img.f.Close())
	if img.backing != nil {
		err = errors.Join(err, img.backing.Close())
	}
	return err
}
