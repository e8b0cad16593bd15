package qcow2_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/qcow2"
)

// check runs qemu-img check and fails on any error or leak.
func check(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", img).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No errors were found") || strings.Contains(string(out), "leaked") {
		t.Fatalf("qemu-img check %s: %v\n%s", img, err, out)
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
