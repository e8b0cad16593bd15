package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/qcow2"
)

// check runs qemu-img check and fails on any error or leak.
func check(t *testing.T, img string) {
	t.Helper()
	if code, out := checkCode(img); code != 0 || !strings.Contains(out, "No errors were found") || strings.Contains(out, "leaked") {
		t.Fatalf("qemu-img check %s: exit %d\n%s", img, code, out)
	}
}

// storm applies random writes, zero writes and trims to img and to a
// mirror of what the disk must hold, syncing now and then.
func storm(t *testing.T, img *qcow2.Image, mirror []byte, seed uint64, ops int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 3))
	size := int64(len(mirror))
	for i := 0; i < ops; i++ {
		off := r.Int64N(size)
		n := min(size-off, 1+r.Int64N(256<<10))
		switch k := r.IntN(10); {
		case k < 6:
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(r.Uint32())
			}
			if _, err := img.WriteAt(p, off); err != nil {
				t.Fatalf("op %d: write %d+%d: %v", i, off, n, err)
			}
			copy(mirror[off:], p)
		case k < 8:
			if err := img.Zero(off, n, r.IntN(2) == 0); err != nil {
				t.Fatalf("op %d: zero %d+%d: %v", i, off, n, err)
			}
			clear(mirror[off : off+n])
		default:
			if err := img.Trim(off, n); err != nil {
				t.Fatalf("op %d: trim %d+%d: %v", i, off, n, err)
			}
			clear(mirror[off : off+n])
		}
		if r.IntN(15) == 0 {
			if err := img.Sync(); err != nil {
				t.Fatalf("op %d: sync: %v", i, err)
			}
		}
	}
}

// TestWritesCheckClean writes to images of every kind, then wants
// qemu-img check to find no errors and no leaks, and QEMU to read what
// was written; with a backing file, the backing file is unchanged.
func TestWritesCheckClean(t *testing.T) {
	testenv.Need(t, "qemu-img", "qemu-io")
	for _, tt := range []struct {
		name    string
		convert []string // from the raw source; nil: an empty image
		backing bool
		grows   bool // the writes outgrow the refcount table
	}{
		{name: "empty-v3-64K"},
		{name: "v2-64K", convert: []string{"-o", "compat=0.10"}},
		{name: "v3-4K", convert: []string{"-o", "cluster_size=4096"}},
		{name: "v3-2M", convert: []string{"-o", "cluster_size=2M"}},
		{name: "v3-512-grows-refcount-table", convert: []string{"-o", "cluster_size=512"}, grows: true},
		{name: "compressed", convert: []string{"-c", "-o", "cluster_size=4096"}},
		{name: "refcount-bits-1", convert: []string{"-o", "refcount_bits=1,cluster_size=4096"}},
		{name: "refcount-bits-64", convert: []string{"-o", "refcount_bits=64"}},
		{name: "prealloc-metadata", convert: []string{"-o", "preallocation=metadata"}},
		{name: "backing-v3", backing: true},
		{name: "backing-v2", backing: true, convert: []string{"-o", "compat=0.10"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			src := source(t, dir, uint64(len(tt.name)))
			path := filepath.Join(dir, "img.qcow2")
			var mirror []byte
			switch {
			case tt.backing:
				base := filepath.Join(dir, "base.qcow2")
				qemu(t, dir, "qemu-img", "convert", "-O", "qcow2", "-c", src, base)
				opts := append([]string{"create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2"}, tt.convert...)
				qemu(t, dir, "qemu-img", append(opts, path)...)
				mirror, _ = os.ReadFile(src)
			case tt.convert == nil:
				qemu(t, dir, "qemu-img", "create", "-f", "qcow2", path, fmt.Sprint(diskSize))
				mirror = make([]byte, diskSize)
			default:
				qemu(t, dir, "qemu-img", append(append([]string{"convert", "-O", "qcow2"}, tt.convert...), src, path)...)
				mirror, _ = os.ReadFile(src)
			}
			var baseBefore []byte
			if tt.backing {
				baseBefore, _ = os.ReadFile(filepath.Join(dir, "base.qcow2"))
			}
			img, err := qcow2.Open(path, qcow2.Options{Writable: true, CacheBytes: 64 << 10})
			if err != nil {
				t.Fatal(err)
			}
			table := img.Header().RefcountOffset
			storm(t, img, mirror, uint64(len(tt.name)), 300)
			got := make([]byte, len(mirror))
			if _, err := img.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(got, mirror); i >= 0 {
				t.Fatalf("read back before close: byte %d is %#x, want %#x", i, got[i], mirror[i])
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			check(t, path)
			if moved := img.Header().RefcountOffset != table; moved != tt.grows {
				t.Errorf("the refcount table moved: %v, want %v", moved, tt.grows)
			}
			if i := firstDiff(raw(t, dir, path), mirror); i >= 0 {
				t.Fatalf("QEMU reads byte %d differently from what was written", i)
			}
			if tt.backing {
				if after, _ := os.ReadFile(filepath.Join(dir, "base.qcow2")); !bytes.Equal(after, baseBefore) {
					t.Fatal("the backing file changed")
				}
			}
		})
	}
}

// An image cut short (a copy that stopped, a disk that filled) still
// references clusters past its end. Written, the next allocation at the
// end of the file landed on them: two guest offsets shared a cluster
// (qemu-img check: "cluster 32 refcount=1 reference=2"). It is refused
// for writing, naming qemu-img check, and still opens read-only.
func TestTruncatedImageRefusedForWriting(t *testing.T) {
	testenv.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "big.qcow2")
	qemu(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", img, "256M")
	qemu(t, dir, "qemu-io", "-c", "write -P 0x11 0 32M", "-c", "write -P 0x22 100M 8M", img)
	if err := os.Truncate(img, 2<<20); err != nil {
		t.Fatal(err)
	}
	_, err := qcow2.Open(img, qcow2.Options{Writable: true})
	if err == nil {
		t.Fatal("a truncated image was opened for writing")
	}
	for _, want := range []string{"the image is damaged", "lies past the end of the 2097152-byte file", "qemu-img check -r all " + img, "read-only"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	ro, err := qcow2.Open(img, qcow2.Options{})
	if err != nil {
		t.Fatalf("read-only open: %v", err)
	}
	defer ro.Close()
	r, err := ro.Check()
	if err != nil || r.Corruptions == 0 {
		t.Fatalf("Check: %+v, %v: want corruptions", r, err)
	}
}

// The check counts what qemu-img check counts: a clean image written by
// qemu has no corruption and no leak, and each kind of damage is found.
func TestCheck(t *testing.T) {
	testenv.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	clean := filepath.Join(dir, "clean.qcow2")
	qemu(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", clean, "8M")
	qemu(t, dir, "qemu-io", "-c", "write -P 1 0 64k", "-c", "write -c -P 2 1M 4k", "-c", "write -z 2M 8k", clean)
	data, err := os.ReadFile(clean)
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := qcow2.ParseHeader(data)
	if err != nil {
		t.Fatal(err)
	}
	l2 := int64(binary.BigEndian.Uint64(data[hdr.L1Offset:]) & 0x00fffffffffffe00)
	tests := []struct {
		name   string
		damage func(b []byte) []byte
		want   string // "" for clean
	}{
		{"clean", func(b []byte) []byte { return b }, ""},
		{"data cluster shared with the L1 table", func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[l2:], 1<<63|hdr.L1Offset)
			return b
		}, "has refcount 1 but 2 references"},
		{"data cluster counted free", func(b []byte) []byte {
			end := (len(b) + 4095) &^ 4095
			b = append(b, make([]byte, end+4096-len(b))...)
			binary.BigEndian.PutUint64(b[l2+8*100:], 1<<63|uint64(end))
			return b
		}, "has 1 references but refcount 0"},
		{"copied flag on a shared cluster", func(b []byte) []byte {
			e := binary.BigEndian.Uint64(b[l2:])
			binary.BigEndian.PutUint64(b[l2:], e&^(1<<63))
			return b
		}, "copied flag clear"},
		{"reserved bits", func(b []byte) []byte {
			b[l2+7] |= 0x10
			return b
		}, "reserved bits set"},
		{"cut short", func(b []byte) []byte { return b[:len(b)-8192] }, "past the end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.qcow2")
			if err := os.WriteFile(p, tt.damage(append([]byte(nil), data...)), 0o644); err != nil {
				t.Fatal(err)
			}
			img, err := qcow2.Open(p, qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			r, err := img.Check()
			if err != nil {
				t.Fatal(err)
			}
			got := r.Err(p)
			switch {
			case tt.want == "" && (got != nil || r.Leaks != 0):
				t.Fatalf("a clean image: %v, %d leaks", got, r.Leaks)
			case tt.want != "" && (got == nil || !strings.Contains(got.Error(), tt.want)):
				t.Fatalf("got %v, want an error saying %q", got, tt.want)
			}
			code, out := checkCode(p)
			if (code == 0) != (tt.want == "") {
				t.Errorf("qemu-img check disagrees (exit %d):\n%s", code, out)
			}
		})
	}
}
