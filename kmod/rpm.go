package kmod

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/nbdlab/nbdlab/cpio"
)

// RPM header tags and types this package reads.
const (
	rpmSigMD5             = 1004
	rpmTagPayloadCompress = 1125
	rpmTagPayloadDigest   = 5092
	rpmTagPayloadAlgo     = 5093

	rpmTypeInt32       = 4
	rpmTypeString      = 6
	rpmTypeBin         = 7
	rpmTypeStringArray = 8

	rpmLeadSize   = 96
	pgpHashSHA256 = 8
)

var rpmLeadMagic = []byte{0xed, 0xab, 0xee, 0xdb}
var rpmHeaderMagic = []byte{0x8e, 0xad, 0xe8, 0x01}

// rpmHeader is a parsed RPM header: tag -> raw value.
type rpmHeader struct {
	entries map[uint32]rpmEntry
	raw     []byte // the whole header as it was in the file
}

type rpmEntry struct {
	typ   uint32
	count uint32
	data  []byte // from the entry's offset to the end of the store
}

func (h rpmHeader) str(tag uint32) string {
	e, ok := h.entries[tag]
	if !ok || (e.typ != rpmTypeString && e.typ != rpmTypeStringArray) {
		return ""
	}
	if i := bytes.IndexByte(e.data, 0); i >= 0 {
		return string(e.data[:i])
	}
	return ""
}

func (h rpmHeader) int32(tag uint32) (uint32, bool) {
	e, ok := h.entries[tag]
	if !ok || e.typ != rpmTypeInt32 || len(e.data) < 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(e.data), true
}

func (h rpmHeader) bin(tag uint32) []byte {
	e, ok := h.entries[tag]
	if !ok || e.typ != rpmTypeBin || uint32(len(e.data)) < e.count {
		return nil
	}
	return e.data[:e.count]
}

// readRPMHeader reads one header structure from r.
func readRPMHeader(r io.Reader) (rpmHeader, error) {
	var pre [16]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return rpmHeader{}, err
	}
	if !bytes.Equal(pre[:4], rpmHeaderMagic) {
		return rpmHeader{}, errors.New("bad header magic")
	}
	n := binary.BigEndian.Uint32(pre[8:])
	size := binary.BigEndian.Uint32(pre[12:])
	if n > 1<<16 || size > 256<<20 {
		return rpmHeader{}, fmt.Errorf("header with %d entries and %d bytes", n, size)
	}
	rest := make([]byte, 16*int(n)+int(size))
	if _, err := io.ReadFull(r, rest); err != nil {
		return rpmHeader{}, err
	}
	store := rest[16*n:]
	h := rpmHeader{entries: map[uint32]rpmEntry{}, raw: append(pre[:], rest...)}
	for i := uint32(0); i < n; i++ {
		e := rest[16*i:]
		tag, typ := binary.BigEndian.Uint32(e), binary.BigEndian.Uint32(e[4:])
		off, count := binary.BigEndian.Uint32(e[8:]), binary.BigEndian.Uint32(e[12:])
		if off > size {
			return rpmHeader{}, fmt.Errorf("tag %d points past the store", tag)
		}
		h.entries[tag] = rpmEntry{typ: typ, count: count, data: store[off:]}
	}
	return h, nil
}

// UnpackSRPM unpacks the payload of a source RPM into dir, after checking
// the payload digest (or, for older RPMs, the header+payload MD5) the
// package records. It returns the files written.
func UnpackSRPM(ctx context.Context, path, dir string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("kmod: %w", err)
	}
	fail := func(format string, a ...any) ([]string, error) {
		return nil, fmt.Errorf("kmod: %s: "+format, append([]any{filepath.Base(path)}, a...)...)
	}
	if len(data) < rpmLeadSize || !bytes.Equal(data[:4], rpmLeadMagic) {
		return fail("not an RPM package")
	}
	r := bytes.NewReader(data[rpmLeadSize:])
	sig, err := readRPMHeader(r)
	if err != nil {
		return fail("signature header: %v", err)
	}
	if pad := (8 - len(sig.raw)%8) % 8; pad > 0 {
		r.Seek(int64(pad), io.SeekCurrent)
	}
	hdr, err := readRPMHeader(r)
	if err != nil {
		return fail("header: %v", err)
	}
	payload := data[len(data)-r.Len():]
	switch want := hdr.str(rpmTagPayloadDigest); {
	case want != "":
		if algo, ok := hdr.int32(rpmTagPayloadAlgo); ok && algo != pgpHashSHA256 {
			return fail("payload digest algorithm %d is not SHA-256", algo)
		}
		sum := sha256.Sum256(payload)
		if got := hex.EncodeToString(sum[:]); got != want {
			return fail("payload sha256 %s, want %s: the file is corrupt", got, want)
		}
	case sig.bin(rpmSigMD5) != nil:
		h := md5.New()
		h.Write(hdr.raw)
		h.Write(payload)
		if got := h.Sum(nil); !bytes.Equal(got, sig.bin(rpmSigMD5)) {
			return fail("header+payload MD5 %x, want %x: the file is corrupt", got, sig.bin(rpmSigMD5))
		}
	default:
		return fail("records no payload digest to check it against")
	}
	var pr io.Reader
	switch comp := hdr.str(rpmTagPayloadCompress); comp {
	case "gzip", "":
		zr, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return fail("payload: %v", err)
		}
		pr = zr
	case "bzip2":
		pr = bzip2.NewReader(bytes.NewReader(payload))
	case "xz", "lzma", "zstd":
		tool := map[string]string{"xz": "xz", "lzma": "xz", "zstd": "zstd"}[comp]
		cmd := exec.CommandContext(ctx, tool, "-dc")
		cmd.Stdin = bytes.NewReader(payload)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return fail("decompress %s payload with %s: %v: %s", comp, tool, err, strings.TrimSpace(errb.String()))
		}
		pr = &out
	default:
		return fail("unknown payload compressor %q", comp)
	}
	files, err := cpio.Read(pr)
	if err != nil {
		return fail("payload: %v", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var out []string
	for _, f := range files {
		if f.Mode&0o170000 != cpio.ModeRegular {
			continue
		}
		// Source RPMs are flat; anything with a path is refused rather
		// than written outside dir.
		name := strings.TrimPrefix(f.Name, "./")
		if name == "" || strings.Contains(name, "/") || name == ".." {
			return fail("payload entry %q is not a plain file name", f.Name)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, f.Data, 0o644); err != nil {
			return nil, fmt.Errorf("kmod: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}
