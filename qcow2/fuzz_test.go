package qcow2_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nbdlab/nbdlab/qcow2"
)

// FuzzOpen feeds malformed images to Open, to reads of what opens, and to
// writes, zeroes and a sync of it opened writable (which parse the
// refcount table and blocks): errors are fine, panics and hangs are not.
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	for i, opts := range [][]string{
		{"-o", "cluster_size=512"},
		{"-o", "cluster_size=4096,compat=0.10"},
		{"-c", "-o", "cluster_size=4096"},
	} {
		src := filepath.Join(dir, "src")
		b := make([]byte, 256<<10)
		for j := range b {
			if (j/8192)%3 == i%3 {
				b[j] = byte(j * 31 / 7)
			}
		}
		os.WriteFile(src, b, 0o644)
		img := filepath.Join(dir, "seed.qcow2")
		args := append(append([]string{"convert", "-O", "qcow2"}, opts...), src, img)
		if exec.Command("qemu-img", args...).Run() != nil {
			continue // no qemu-img: the header below still seeds
		}
		exec.Command("qemu-io", "-f", "qcow2", "-c", "write -z 65536 8192", img).Run()
		if seed, err := os.ReadFile(img); err == nil {
			f.Add(seed)
		}
	}
	f.Add(append([]byte(qcow2.Magic), 0, 0, 0, 3))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "img")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		img, err := qcow2.Open(p, qcow2.Options{CacheBytes: 4096})
		if err != nil {
			return
		}
		buf := make([]byte, 64<<10)
		for _, off := range []int64{0, 4096, 65536 - 100, img.Size() - 1000, img.Size() / 2} {
			if off >= 0 {
				img.ReadAt(buf, off)
			}
		}
		img.Extents(0, min(img.Size(), 4<<20))
		img.Close()
		// Writing reads the refcount table and blocks too.
		w, err := qcow2.Open(p, qcow2.Options{CacheBytes: 4096, Writable: true})
		if err != nil {
			return
		}
		defer w.Close()
		for _, off := range []int64{0, w.Size() / 3, w.Size() - 5000} {
			if off >= 0 && off+4096 <= w.Size() {
				w.WriteAt(buf[:4096], off)
			}
		}
		w.Zero(0, min(w.Size(), 1<<20), false)
		w.Sync()
	})
}
