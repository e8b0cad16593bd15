package qcow2_test

import (
	"bytes"
	"encoding/json"
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

const diskSize = 24 << 20

// qemu runs a QEMU tool in dir and fails the test on error.
func qemu(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// source writes a raw disk with random data in some places, a repeating
// pattern (which compresses) in others and zeroes between.
func source(t *testing.T, dir string, seed uint64) string {
	p := filepath.Join(dir, fmt.Sprintf("src%d.raw", seed))
	b := make([]byte, diskSize)
	r := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i < 40; i++ {
		off, n := r.IntN(diskSize-300<<10), 1+r.IntN(300<<10)
		if i%2 == 0 {
			for j := off; j < off+n; j++ {
				b[j] = byte(r.Uint32())
			}
		} else {
			for j := off; j < off+n; j++ {
				b[j] = byte(j/512) + byte(seed)
			}
		}
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// scribble changes an image in place with qemu-io: unaligned writes, zero
// writes (the zero flag on v3) and discards.
func scribble(t *testing.T, dir, img string, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 11))
	var cmds []string
	for i := 0; i < 12; i++ {
		off, n := r.IntN(diskSize-200<<10), 1+r.IntN(200<<10)
		switch i % 3 {
		case 0:
			cmds = append(cmds, "-c", fmt.Sprintf("write -P %d %d %d", 1+r.IntN(250), off, n))
		case 1:
			off &^= 4095
			cmds = append(cmds, "-c", fmt.Sprintf("write -z %d %d", off, (n+4095)&^4095))
		case 2:
			off &^= 65535
			cmds = append(cmds, "-c", fmt.Sprintf("discard %d %d", off, (n+65535)&^65535))
		}
	}
	qemu(t, dir, "qemu-io", append([]string{"-f", "qcow2"}, append(cmds, img)...)...)
}

// raw returns the guest's bytes as QEMU reads them.
func raw(t *testing.T, dir, img string) []byte {
	out := img + ".as-raw"
	qemu(t, dir, "qemu-img", "convert", "-O", "raw", img, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// same compares what Image reads with what QEMU reads, in odd-sized
// pieces that cross cluster boundaries, and whole.
func same(t *testing.T, path string, want []byte) {
	t.Helper()
	img, err := qcow2.Open(path, qcow2.Options{CacheBytes: 1}) // a one-table cache: every miss reloads
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Size() != int64(len(want)) {
		t.Fatalf("size %d, QEMU says %d", img.Size(), len(want))
	}
	got := make([]byte, len(want))
	for off, step := 0, 0; off < len(got); off += step {
		step = min(len(got)-off, 1+(off*7919)%(300<<10))
		if _, err := img.ReadAt(got[off:off+step], int64(off)); err != nil {
			t.Fatalf("read %d+%d: %v", off, step, err)
		}
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("byte %d differs from QEMU's: %#x, want %#x (cluster %d KiB)", i, got[i], want[i], img.Header().ClusterSize()>>10)
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// TestReadsLikeQEMU reads images qemu-img made, of every kind the package
// takes, and wants the bytes qemu-img convert -O raw gives.
func TestReadsLikeQEMU(t *testing.T) {
	testenv.Need(t, "qemu-img", "qemu-io")
	for _, tt := range []struct {
		name    string
		convert []string // options of qemu-img convert from the raw source
		edit    bool     // scribble on the image after
	}{
		{name: "v2-64K", convert: []string{"-o", "compat=0.10"}, edit: true},
		{name: "v3-4K", convert: []string{"-o", "cluster_size=4096"}, edit: true},
		{name: "v3-64K", edit: true},
		{name: "v3-2M", convert: []string{"-o", "cluster_size=2M"}, edit: true},
		{name: "v3-512", convert: []string{"-o", "cluster_size=512"}},
		{name: "compressed-64K", convert: []string{"-c"}},
		{name: "compressed-4K", convert: []string{"-c", "-o", "cluster_size=4096"}, edit: true},
		{name: "compressed-v2", convert: []string{"-c", "-o", "compat=0.10"}},
		{name: "prealloc-metadata", convert: []string{"-o", "preallocation=metadata"}, edit: true},
		{name: "prealloc-full", convert: []string{"-o", "preallocation=full"}},
		{name: "refcount-bits-1", convert: []string{"-o", "refcount_bits=1"}},
		{name: "lazy-refcounts", convert: []string{"-o", "lazy_refcounts=on"}, edit: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			src := source(t, dir, uint64(len(tt.name)))
			img := filepath.Join(dir, "img.qcow2")
			qemu(t, dir, "qemu-img", append(append([]string{"convert", "-O", "qcow2"}, tt.convert...), src, img)...)
			if tt.edit {
				scribble(t, dir, img, uint64(len(tt.name)))
			}
			content := raw(t, dir, img)
			same(t, img, content)
			checkExtents(t, img, content, qemuMap(t, dir, img))
		})
	}
}

// unnameFormat turns an image's backing format extension into one of an
// unknown type, which readers skip: the format must then be probed.
func unnameFormat(t *testing.T, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b[:4096], []byte{0xe2, 0x79, 0x2a, 0xca})
	if i < 0 {
		t.Fatal("no backing format extension")
	}
	copy(b[i:], []byte{0x7e, 0x57, 0x00, 0x01})
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBackingChain reads a chain three deep under the top image: raw at
// the bottom, named relatively, with and without a format, the top
// larger than what is under it.
func TestBackingChain(t *testing.T) {
	testenv.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	base := source(t, dir, 1)
	os.Rename(base, filepath.Join(dir, "sub", "base.raw"))
	qemu(t, dir, "qemu-img", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "sub/mid.qcow2")
	scribble(t, dir, "sub/mid.qcow2", 2)
	qemu(t, dir, "qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "mid.qcow2", "-F", "qcow2", "sub/upper.qcow2")
	scribble(t, dir, "sub/upper.qcow2", 3)
	// The top names its backing file by a path relative to its own
	// directory, without a format, and is larger than the chain under it.
	qemu(t, dir, "qemu-img", "create", "-f", "qcow2", "-u", "-b", "sub/upper.qcow2", "-F", "qcow2", "top.qcow2", fmt.Sprint(diskSize+3<<20))
	unnameFormat(t, filepath.Join(dir, "top.qcow2"))
	qemu(t, dir, "qemu-io", "-f", "qcow2", "-c", "write -P 9 1000 5000", "-c", fmt.Sprintf("write -P 8 %d 70000", diskSize-1000), "top.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	content := raw(t, dir, top)
	same(t, top, content)
	checkExtents(t, top, content, nil) // QEMU also maps the raw file's holes

	img, err := qcow2.Open(top, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if got := img.Backing(); len(got) != 3 || !strings.HasSuffix(got[2], "base.raw (raw)") {
		t.Errorf("backing chain %q, want three images ending in base.raw", got)
	}
}

type qemuExtent struct {
	Start, Length int64
	Zero, Data    bool
}

// qemuMap is qemu-img map's view of an image.
func qemuMap(t *testing.T, dir, img string) []qemuExtent {
	cmd := exec.Command("qemu-img", "map", "--output=json", img)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("qemu-img map %s: %v", img, err)
	}
	var m []qemuExtent
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// checkExtents wants the extents to cover the disk, every zero extent to
// read as zeroes, and, where QEMU's map is given, the same states as it.
func checkExtents(t *testing.T, path string, content []byte, qm []qemuExtent) {
	t.Helper()
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	type state struct{ zero, hole bool }
	ours := make([]state, 0, len(content)/512)
	for off := int64(0); off < img.Size(); {
		ext, err := img.Extents(off, img.Size()-off)
		if err != nil || len(ext) == 0 {
			t.Fatalf("extents at %d: %v %v", off, ext, err)
		}
		for _, e := range ext {
			if e.Length <= 0 || e.Length%512 != 0 {
				t.Fatalf("extent at %d of length %d", off, e.Length)
			}
			if e.Zero && !bytes.Equal(content[off:off+e.Length], make([]byte, e.Length)) {
				t.Fatalf("extent %d+%d says zero but holds data", off, e.Length)
			}
			for i := int64(0); i < e.Length; i += 512 {
				ours = append(ours, state{e.Zero, e.Hole})
			}
			off += e.Length
		}
	}
	for _, q := range qm {
		for s := q.Start; s < q.Start+q.Length; s += 512 {
			// Over data, QEMU also asks the file system for holes
			// (preallocated clusters): saying data there is not wrong.
			want := state{q.Zero, !q.Data}
			if q.Data && ours[s/512] == (state{}) {
				want = state{}
			}
			if ours[s/512] != want {
				t.Fatalf("byte %d: zero %v hole %v, qemu-img map says zero %v data %v", s, ours[s/512].zero, ours[s/512].hole, q.Zero, q.Data)
			}
		}
	}
}
