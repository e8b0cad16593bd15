package nbd_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/nbd"
)

func TestWindowBounds(t *testing.T) {
	base := nbd.NewMem(1 << 20)
	for _, tc := range []struct {
		off, size, want int64
		err             string
	}{
		{0, 0, 1 << 20, ""},
		{4096, 0, 1<<20 - 4096, ""},
		{4096, 8192, 8192, ""},
		{1 << 20, 0, 0, "leaves nothing"},
		{-1, 0, 0, "outside"},
		{2 << 20, 0, 0, "outside"},
		{4096, 1 << 20, 0, "past the end"},
	} {
		w, err := nbd.NewWindow(base, tc.off, tc.size)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("NewWindow(%d, %d) = %v, want an error saying %q", tc.off, tc.size, err, tc.err)
			}
		case err != nil:
			t.Errorf("NewWindow(%d, %d): %v", tc.off, tc.size, err)
		case w.Size() != tc.want:
			t.Errorf("NewWindow(%d, %d).Size() = %d, want %d", tc.off, tc.size, w.Size(), tc.want)
		}
	}
}

// readWriter is a Backend with nothing but reads and writes, so that the
// window's fallbacks are what run.
type readWriter struct{ m *nbd.Mem }

func (r readWriter) ReadAt(p []byte, off int64) (int, error)  { return r.m.ReadAt(p, off) }
func (r readWriter) WriteAt(p []byte, off int64) (int, error) { return r.m.WriteAt(p, off) }
func (r readWriter) Size() int64                              { return r.m.Size() }
func (r readWriter) Sync() error                              { return nil }

func TestWindowShifts(t *testing.T) {
	for _, tc := range []struct {
		name string
		base nbd.Backend
	}{{"mem", nbd.NewMem(1 << 20)}, {"reads and writes only", readWriter{nbd.NewMem(1 << 20)}}} {
		t.Run(tc.name, func(t *testing.T) {
			const off = 64 << 10
			w, err := nbd.NewWindow(tc.base, off, 128<<10)
			if err != nil {
				t.Fatal(err)
			}
			data := bytes.Repeat([]byte{0xab}, 4096)
			if _, err := w.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := w.WriteAtFUA(data, 8192); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 4096)
			tc.base.ReadAt(got, off)
			if !bytes.Equal(got, data) {
				t.Fatal("a write at the window's 0 did not land at its offset in the image")
			}
			tc.base.ReadAt(got, off+8192)
			if !bytes.Equal(got, data) {
				t.Fatal("a FUA write did not land at its offset in the image")
			}
			if err := w.Trim(0, 4096); err != nil {
				t.Fatal(err)
			}
			if err := w.Zero(8192, 4096, nbd.ZeroFlags{}); err != nil {
				t.Fatal(err)
			}
			for _, at := range []int64{off, off + 8192} {
				tc.base.ReadAt(got, at)
				if !bytes.Equal(got, make([]byte, 4096)) {
					t.Errorf("image at %d is not zero after trim and zero", at)
				}
			}
			ext, err := w.Extents(0, 128<<10)
			if err != nil || len(ext) == 0 || ext[0].Length > 128<<10 {
				t.Errorf("extents %v, %v", ext, err)
			}
		})
	}
}
