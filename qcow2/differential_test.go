package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
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

var (
	diffImages = flag.Int("diff.images", 16, "images TestDifferential makes (go run mage.go fuzz:qcow2 makes more)")
	diffOps    = flag.Int("diff.ops", 6, "operations TestDifferential applies to each image")
	diffSeed   = flag.Uint64("diff.seed", 1, "TestDifferential's first seed; image i has seed+i")
)

// TestDifferential makes random qcow2 images with qemu-img and qemu-io
// (every cluster size, both versions, every refcount width, backing
// files, compressed clusters, internal snapshots) and damages some of
// them (cut short at a random byte, a bit flipped in a table), then asks
// two questions of each copy:
//   - May it be written? qemu-img check's verdict is the reference: an
//     image it finds corrupt, or cannot open, must be refused by a
//     writable Open; one it passes should open (a refusal is logged).
//   - If written, do nbdlab and qemu-io agree? The same random writes,
//     zero writes and discards go through qcow2.Image and through qemu-io,
//     and after each the disks must read the same (qemu-img convert of
//     each; a discarded range is left out until written again, as the
//     two may leave different bytes there), nbdlab's image must read the
//     same through qemu as through nbdlab, and qemu-img check must find
//     no corruption in it.
func TestDifferential(t *testing.T) {
	testenv.Need(t, "qemu-img", "qemu-io")
	var st diffStats
	for i := range *diffImages {
		seed := *diffSeed + uint64(i)
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) { differential(t, seed, *diffOps, &st) })
	}
	t.Logf("%d images: %d written through both (%d operations compared), %d refused as damaged by both, %d with snapshots refused, %d refused by nbdlab alone",
		st.images, st.written, st.ops, st.bothRefused, st.snapshots, st.refusedAlone)
	for _, s := range st.aloneWhy {
		t.Logf("  refused by nbdlab alone: %s", s)
	}
}

type diffStats struct {
	images, written, ops, bothRefused, snapshots, refusedAlone int
	aloneWhy                                                   []string
}

// checkCode runs qemu-img check -U: 0 clean, 1 not checked (could not
// open), 2 corrupt, 3 leaks only.
func checkCode(path string) (int, string) {
	out, err := exec.Command("qemu-img", "check", "-U", path).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	return 0, string(out)
}

func rawOf(t *testing.T, path string) []byte {
	t.Helper()
	raw := path + ".raw"
	qemu(t, "", "qemu-img", "convert", "-U", "-O", "raw", path, raw)
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(raw)
	return b
}

func differential(t *testing.T, seed uint64, ops int, st *diffStats) {
	r := rand.New(rand.NewPCG(seed, 0x9c02))
	dir := t.TempDir()
	st.images++

	// The image: its geometry, a backing file perhaps, its contents.
	bits := []int{9, 12, 16, 16, 21}[r.IntN(5)]
	cs := int64(1) << bits
	size := (4<<20 + r.Int64N(20<<20)) &^ 511
	if bits == 21 {
		size = max(size, 8<<20)
	}
	opts := fmt.Sprintf("cluster_size=%d", cs)
	if r.IntN(4) == 0 {
		opts += ",compat=0.10"
	} else {
		opts += fmt.Sprintf(",refcount_bits=%d", []int{1, 2, 4, 8, 16, 16, 32, 64}[r.IntN(8)])
	}
	img := filepath.Join(dir, "img.qcow2")
	create := []string{"create", "-q", "-f", "qcow2", "-o", opts}
	if r.IntN(3) == 0 {
		bfmt := []string{"raw", "qcow2"}[r.IntN(2)]
		qemu(t, "", "qemu-img", "create", "-q", "-f", bfmt, filepath.Join(dir, "base."+bfmt), fmt.Sprint(size))
		qemu(t, "", "qemu-io", append([]string{"-f", bfmt}, append(randomOps(r, size, cs, 6, false), filepath.Join(dir, "base."+bfmt))...)...)
		create = append(create, "-b", "base."+bfmt, "-F", bfmt)
	}
	qemu(t, "", "qemu-img", append(create, img, fmt.Sprint(size))...)
	// qemu-io fails compressed writes of 2 MiB clusters with EIO.
	// qemu-io may fail here: qemu 7.2 was seen to mark its own image
	// corrupt over compressed writes of 4 KiB clusters ("Preventing
	// invalid write on metadata"). Such an image is one more to refuse.
	if out, err := exec.Command("qemu-io", append([]string{"-f", "qcow2"}, append(randomOps(r, size, cs, 4+r.IntN(12), bits < 21), img)...)...).CombinedOutput(); err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Logf("qemu-io failed making the image (%v): %s", err, lines[len(lines)-1])
	}
	// A snapshot needs refcounts of 2: not with refcount_bits=1.
	snapshot := r.IntN(12) == 0 && !strings.Contains(opts, "refcount_bits=1,") && !strings.HasSuffix(opts, "refcount_bits=1")
	if snapshot {
		qemu(t, "", "qemu-img", "snapshot", "-c", "s1", img)
	}
	damage := "none"
	switch r.IntN(3) {
	case 0:
		damage = truncate(t, r, img)
	case 1:
		damage = flip(t, r, img)
	}
	t.Logf("seed %d: cluster %d, %s, size %d, damage: %s", seed, cs, opts, size, damage)

	a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	for _, p := range []string{a, b} {
		data, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(p, data, 0o644)
	}
	code, report := checkCode(b)
	if os.Getenv("DIFF_KEEP") != "" {
		exec.Command("cp", img, "/tmp/diffkeep.qcow2").Run()
	}
	ours, err := qcow2.Open(a, qcow2.Options{Writable: true})
	switch {
	case err != nil && snapshot:
		st.snapshots++
		return
	case err != nil && code != 0 && code != 3:
		st.bothRefused++
		return
	case err != nil:
		st.refusedAlone++
		st.aloneWhy = append(st.aloneWhy, fmt.Sprintf("seed %d (%s): %v", seed, damage, err))
		t.Logf("refused where qemu-img check passes (exit %d): %v", code, err)
		return
	case code != 0 && code != 3:
		ours.Close()
		t.Fatalf("opened for writing an image qemu-img check finds damaged (exit %d; damage %s):\n%s", code, damage, report)
	case snapshot:
		ours.Close()
		t.Fatal("opened an image with internal snapshots for writing")
	}
	defer ours.Close()
	st.written++

	// The same operations through both, compared after each.
	dontCare := make([]bool, ours.Size()/512+1) // sectors a discard left unspecified
	for i := range ops {
		op := randomOps(r, ours.Size(), cs, 1, false)
		if err := apply(ours, op[1]); err != nil {
			t.Fatalf("op %d %q through nbdlab: %v", i, op[1], err)
		}
		qemu(t, "", "qemu-io", "-f", "qcow2", op[0], op[1], b)
		markDiscards(dontCare, op[1])
		if err := ours.Sync(); err != nil {
			t.Fatalf("op %d %q: sync: %v", i, op[1], err)
		}
		st.ops++
		mine := make([]byte, ours.Size())
		if _, err := ours.ReadAt(mine, 0); err != nil {
			t.Fatalf("op %d: read back: %v", i, err)
		}
		if !bytes.Equal(mine, rawOf(t, a)) {
			t.Fatalf("op %d %q: qemu reads nbdlab's image differently from nbdlab", i, op[1])
		}
		theirs := rawOf(t, b)
		for s := int64(0); s < int64(len(mine)); s += 512 {
			e := min(s+512, int64(len(mine)))
			if !dontCare[s/512] && !bytes.Equal(mine[s:e], theirs[s:e]) {
				t.Fatalf("op %d %q: byte %d on differs between nbdlab and qemu-io", i, op[1], s)
			}
		}
		if code, out := checkCode(a); code == 1 || code == 2 {
			t.Fatalf("op %d %q: qemu-img check of nbdlab's image (exit %d):\n%s", i, op[1], code, out)
		}
	}
}

// randomOps returns n qemu-io commands as "-c", CMD pairs: writes of a
// pattern at any byte, zero writes, discards, and (with compress)
// compressed writes of whole clusters.
func randomOps(r *rand.Rand, size, cs int64, n int, compress bool) []string {
	var out []string
	for range n {
		off := r.Int64N(size)
		if r.IntN(3) == 0 {
			off &^= cs - 1
		}
		l := min(size-off, 1+r.Int64N(max(3*cs, 256<<10)))
		var c string
		switch k := r.IntN(10); {
		case compress && k == 0 && size-off&^(cs-1) >= cs:
			c = fmt.Sprintf("write -c -P %d %d %d", 1+r.IntN(255), off&^(cs-1), cs)
		case k < 6:
			c = fmt.Sprintf("write -P %d %d %d", 1+r.IntN(255), off, l)
		case k < 8:
			c = fmt.Sprintf("write -z %d %d", off, l)
		default:
			c = fmt.Sprintf("discard %d %d", off, l)
		}
		out = append(out, "-c", c)
	}
	return out
}

// apply does one qemu-io command to img.
func apply(img *qcow2.Image, cmd string) error {
	f := strings.Fields(cmd)
	var off, n int64
	fmt.Sscan(f[len(f)-2], &off)
	fmt.Sscan(f[len(f)-1], &n)
	switch {
	case f[0] == "discard":
		return img.Trim(off, n)
	case f[1] == "-z":
		return img.Zero(off, n, false)
	default:
		var pat int
		fmt.Sscan(f[len(f)-3], &pat)
		_, err := img.WriteAt(bytes.Repeat([]byte{byte(pat)}, int(n)), off)
		return err
	}
}

// markDiscards marks the sectors a discard touches as unspecified, and
// those a write or zero write covers whole as specified again.
func markDiscards(dontCare []bool, cmd string) {
	f := strings.Fields(cmd)
	var off, n int64
	fmt.Sscan(f[len(f)-2], &off)
	fmt.Sscan(f[len(f)-1], &n)
	if f[0] == "discard" {
		for s := off / 512; s <= (off+n-1)/512; s++ {
			dontCare[s] = true
		}
		return
	}
	for s := (off + 511) / 512; s < (off+n)/512; s++ {
		dontCare[s] = false
	}
}

// truncate cuts the image short at a random byte, as a copy that stopped
// or a disk that filled would.
func truncate(t *testing.T, r *rand.Rand, img string) string {
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	n := r.Int64N(st.Size())
	if err := os.Truncate(img, n); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("cut from %d to %d bytes", st.Size(), n)
}

// flip flips one bit of the header, the L1 table, the refcount table, a
// refcount block or an L2 table.
func flip(t *testing.T, r *rand.Rand, img string) string {
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	h, err := qcow2.ParseHeader(data)
	if err != nil {
		t.Fatal(err)
	}
	cs := h.ClusterSize()
	type region struct {
		name     string
		off, len int64
	}
	regions := []region{{"header", 0, 104}, {"L1 table", int64(h.L1Offset), int64(h.L1Size) * 8},
		{"refcount table", int64(h.RefcountOffset), 64}}
	if rb := int64(binary.BigEndian.Uint64(data[h.RefcountOffset:]) & 0x00fffffffffffe00); rb != 0 {
		regions = append(regions, region{"refcount block", rb, min(cs, 512)})
	}
	if l2 := int64(binary.BigEndian.Uint64(data[h.L1Offset:]) & 0x00fffffffffffe00); l2 != 0 {
		regions = append(regions, region{"L2 table", l2, cs})
	}
	g := regions[r.IntN(len(regions))]
	if g.len == 0 || g.off+g.len > int64(len(data)) {
		return "none (no such table)"
	}
	at := g.off + r.Int64N(g.len)
	bit := r.IntN(8)
	data[at] ^= 1 << bit
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("bit %d of byte %d flipped (%s)", bit, at, g.name)
}
