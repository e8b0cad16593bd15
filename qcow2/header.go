package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Magic is the first four bytes of every qcow2 image.
const Magic = "QFI\xfb"

// Incompatible feature bits.
const (
	IncompatDirty        = 1 << 0
	IncompatCorrupt      = 1 << 1
	IncompatExternalData = 1 << 2
	IncompatCompression  = 1 << 3
	IncompatExtendedL2   = 1 << 4
)

// CompatLazyRefcounts is the compatible feature bit of lazy refcounts.
const CompatLazyRefcounts = 1 << 0

// Header extension types.
const (
	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureNames  = 0x6803f857
	extBitmaps       = 0x23852875
	extEncryption    = 0x0537be77
	extDataFile      = 0x44415441
)

const (
	minClusterBits = 9  // 512-byte clusters
	maxClusterBits = 21 // 2 MiB: QEMU's limit, and this package's
	maxL1Bytes     = 32 << 20
	maxBackingName = 1023
)

// Header is the parsed image header with its extensions.
type Header struct {
	Version         uint32
	BackingOffset   uint64
	BackingSize     uint32
	ClusterBits     uint32
	Size            uint64 // virtual disk size in bytes
	CryptMethod     uint32
	L1Size          uint32 // entries
	L1Offset        uint64
	RefcountOffset  uint64
	RefcountCluster uint32 // clusters the refcount table occupies
	NbSnapshots     uint32
	SnapshotsOffset uint64
	Incompatible    uint64
	Compatible      uint64
	Autoclear       uint64
	RefcountOrder   uint32
	HeaderLength    uint32
	CompressionType uint8

	BackingFormat string             // from the backing file format extension
	FeatureNames  map[[2]byte]string // {type, bit} to name, from the feature name table
}

// ClusterSize is the size of a cluster in bytes.
func (h *Header) ClusterSize() int64 { return 1 << h.ClusterBits }

// l2Entries is the number of entries in one L2 table.
func (h *Header) l2Entries() int64 { return h.ClusterSize() / 8 }

// ParseHeader parses the header at the start of b, which holds at least
// the image's first cluster (or the whole file if it is shorter), and
// refuses what this package cannot read.
func ParseHeader(b []byte) (*Header, error) {
	if len(b) < 4 || string(b[:4]) != Magic {
		return nil, errors.New("not a qcow2 image (no QFI\\xfb magic)")
	}
	if len(b) < 72 {
		return nil, fmt.Errorf("qcow2 header truncated: %d bytes, a header has at least 72", len(b))
	}
	be := binary.BigEndian
	h := &Header{
		Version:         be.Uint32(b[4:]),
		BackingOffset:   be.Uint64(b[8:]),
		BackingSize:     be.Uint32(b[16:]),
		ClusterBits:     be.Uint32(b[20:]),
		Size:            be.Uint64(b[24:]),
		CryptMethod:     be.Uint32(b[32:]),
		L1Size:          be.Uint32(b[36:]),
		L1Offset:        be.Uint64(b[40:]),
		RefcountOffset:  be.Uint64(b[48:]),
		RefcountCluster: be.Uint32(b[56:]),
		NbSnapshots:     be.Uint32(b[60:]),
		SnapshotsOffset: be.Uint64(b[64:]),
		RefcountOrder:   4,
		HeaderLength:    72,
	}
	switch h.Version {
	case 2:
	case 3:
		if len(b) < 104 {
			return nil, errors.New("qcow2 version 3 header is truncated (less than 104 bytes)")
		}
		h.Incompatible = be.Uint64(b[72:])
		h.Compatible = be.Uint64(b[80:])
		h.Autoclear = be.Uint64(b[88:])
		h.RefcountOrder = be.Uint32(b[96:])
		h.HeaderLength = be.Uint32(b[100:])
		if h.HeaderLength < 104 || h.HeaderLength%8 != 0 {
			return nil, fmt.Errorf("qcow2 header length %d: want a multiple of 8, at least 104", h.HeaderLength)
		}
		if h.HeaderLength > 104 && len(b) > 104 {
			h.CompressionType = b[104]
		}
	default:
		return nil, fmt.Errorf("qcow2 version %d: only versions 2 and 3 exist", h.Version)
	}
	if h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits {
		return nil, fmt.Errorf("qcow2 cluster_bits %d: want %d (512 B) to %d (2 MiB)", h.ClusterBits, minClusterBits, maxClusterBits)
	}
	if int64(h.HeaderLength) > h.ClusterSize() || int(h.HeaderLength) > len(b) {
		return nil, fmt.Errorf("qcow2 header length %d does not fit in the first %d-byte cluster", h.HeaderLength, h.ClusterSize())
	}
	if h.RefcountOrder > 6 {
		return nil, fmt.Errorf("qcow2 refcount_order %d: at most 6 (64-bit refcounts)", h.RefcountOrder)
	}
	if err := h.parseExtensions(b); err != nil {
		return nil, err
	}
	if err := h.supported(); err != nil {
		return nil, err
	}
	if err := h.checkLayout(); err != nil {
		return nil, err
	}
	return h, nil
}

// parseExtensions reads the header extensions, which must end inside the
// first cluster.
func (h *Header) parseExtensions(b []byte) error {
	be := binary.BigEndian
	end := min(int64(len(b)), h.ClusterSize())
	if h.BackingOffset != 0 && h.BackingOffset < uint64(end) {
		end = int64(h.BackingOffset)
	}
	seen := map[uint32]bool{}
	for off := int64(h.HeaderLength); ; {
		if off+8 > end {
			return nil // an image may end its extensions at the cluster's end
		}
		typ, n := be.Uint32(b[off:]), int64(be.Uint32(b[off+4:]))
		if typ == extEnd {
			return nil
		}
		data := off + 8
		if n > end-data {
			return fmt.Errorf("qcow2 header extension 0x%08x at byte %d: %d bytes do not fit before byte %d", typ, off, n, end)
		}
		if seen[typ] {
			return fmt.Errorf("qcow2 header extension 0x%08x appears twice", typ)
		}
		seen[typ] = true
		v := b[data : data+n]
		switch typ {
		case extBackingFormat:
			h.BackingFormat = string(v)
		case extFeatureNames:
			h.FeatureNames = map[[2]byte]string{}
			for i := 0; i+48 <= len(v); i += 48 {
				h.FeatureNames[[2]byte{v[i], v[i+1]}] = strings.TrimRight(string(v[i+2:i+48]), "\x00")
			}
		case extDataFile:
			return errors.New("qcow2 external data file: not supported (convert with qemu-img convert -O qcow2)")
		case extEncryption:
			return errors.New("qcow2 encryption header: encrypted images are not supported")
		}
		off = data + (n+7)&^7
	}
}

// supported refuses what this package does not read.
func (h *Header) supported() error {
	switch h.CryptMethod {
	case 0:
	case 1:
		return errors.New("qcow2 AES encryption: not supported (decrypt with qemu-img convert)")
	case 2:
		return errors.New("qcow2 LUKS encryption: not supported (decrypt with qemu-img convert)")
	default:
		return fmt.Errorf("qcow2 crypt_method %d: not supported", h.CryptMethod)
	}
	bad := h.Incompatible &^ (IncompatDirty | IncompatCorrupt)
	if h.Incompatible&IncompatCompression != 0 && h.CompressionType == 0 {
		bad &^= IncompatCompression // zlib, spelled out
	}
	if bad == 0 {
		return nil
	}
	var names []string
	for bit := 0; bit < 64; bit++ {
		if bad&(1<<bit) == 0 {
			continue
		}
		switch 1 << bit {
		case IncompatExternalData:
			names = append(names, "external data file")
		case IncompatCompression:
			names = append(names, fmt.Sprintf("compression type %d (zstd)", h.CompressionType))
		case IncompatExtendedL2:
			names = append(names, "extended L2 entries (subclusters)")
		default:
			if n := h.FeatureNames[[2]byte{0, byte(bit)}]; n != "" {
				names = append(names, fmt.Sprintf("%q (bit %d)", n, bit))
			} else {
				names = append(names, fmt.Sprintf("unknown incompatible feature bit %d", bit))
			}
		}
	}
	return fmt.Errorf("qcow2 image uses %s: not supported (qemu-img convert -O qcow2 -o compat=1.1 makes an image without it)", strings.Join(names, ", "))
}

// checkLayout checks the header's tables against its own numbers: aligned,
// an L1 table large enough for the disk and no larger than QEMU allows.
func (h *Header) checkLayout() error {
	cs := uint64(h.ClusterSize())
	if h.L1Offset%cs != 0 || h.RefcountOffset%cs != 0 {
		return fmt.Errorf("qcow2 L1 table (byte %d) or refcount table (byte %d) is not cluster-aligned", h.L1Offset, h.RefcountOffset)
	}
	if uint64(h.L1Size)*8 > maxL1Bytes {
		return fmt.Errorf("qcow2 L1 table of %d entries: more than %d MiB", h.L1Size, maxL1Bytes>>20)
	}
	perL1 := cs * uint64(h.l2Entries())
	if h.Size > uint64(h.L1Size)*perL1 {
		return fmt.Errorf("qcow2 disk of %d bytes, but the L1 table's %d entries map only %d", h.Size, h.L1Size, uint64(h.L1Size)*perL1)
	}
	if h.Size > 1<<62 {
		return fmt.Errorf("qcow2 disk size %d: too large", h.Size)
	}
	if h.BackingOffset != 0 && h.BackingSize > maxBackingName {
		return fmt.Errorf("qcow2 backing file name of %d bytes: at most %d", h.BackingSize, maxBackingName)
	}
	return nil
}
