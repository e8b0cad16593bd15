package nbd_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/nbdlab/nbdlab/imagelock"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
)

type sparseBackend interface {
	nbd.Backend
	nbd.Zeroer
	nbd.Trimmer
	nbd.Extenter
}

func tmpFile(t *testing.T, size int64, fill byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if fill != 0 {
		f.Write(bytes.Repeat([]byte{fill}, int(size)))
	}
	f.Truncate(size)
	f.Close()
	return p
}

func openFile(t *testing.T, path string, ro bool) *nbd.File {
	t.Helper()
	f, err := nbd.OpenFile(path, map[bool]imagelock.Mode{true: imagelock.Reader, false: imagelock.Writer}[ro])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestBackends runs the same write, zero, trim and extent checks on every
// backend.
func TestBackends(t *testing.T) {
	const size = 4 << 20
	backends := []struct {
		name string
		open func(t *testing.T) sparseBackend
	}{
		{"mem", func(t *testing.T) sparseBackend { return nbd.NewMem(size) }},
		{"file", func(t *testing.T) sparseBackend { return openFile(t, tmpFile(t, size, 0), false) }},
		{"cow over mem", func(t *testing.T) sparseBackend { return nbd.NewCOW(nbd.NewMem(size)) }},
		{"cow over file", func(t *testing.T) sparseBackend { return nbd.NewCOW(openFile(t, tmpFile(t, size, 0), true)) }},
	}
	for _, bk := range backends {
		t.Run(bk.name, func(t *testing.T) {
			b := bk.open(t)
			if b.Size() != size {
				t.Fatalf("size %d, want %d", b.Size(), size)
			}
			data := bytes.Repeat([]byte{0xab}, 256<<10)
			if _, err := b.WriteAt(data, 1<<20+100); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			b.ReadAt(got, 1<<20+100)
			if !bytes.Equal(got, data) {
				t.Fatal("read back differs")
			}
			ext, err := b.Extents(0, size)
			if err != nil {
				t.Fatal(err)
			}
			if ext[0].Flags != nbd.StateHole|nbd.StateZero || ext[0].Length > 1<<20+100 {
				t.Fatalf("extents %+v: want a leading hole", ext)
			}
			var total int64
			var sawData bool
			for _, e := range ext {
				total += e.Length
				sawData = sawData || e.Flags == 0
			}
			if total != size || !sawData {
				t.Fatalf("extents %+v: cover %d bytes, data %v", ext, total, sawData)
			}
			for _, flags := range []nbd.ZeroFlags{{}, {NoHole: true}} {
				b.WriteAt(data, 1<<20)
				if err := b.Zero(1<<20+4096, 128<<10, flags); err != nil {
					t.Fatalf("zero %+v: %v", flags, err)
				}
				b.ReadAt(got[:128<<10], 1<<20+4096)
				if !bytes.Equal(got[:128<<10], make([]byte, 128<<10)) {
					t.Fatalf("zero %+v: range not zero", flags)
				}
				b.ReadAt(got[:4096], 1<<20)
				if !bytes.Equal(got[:4096], data[:4096]) {
					t.Fatalf("zero %+v: touched bytes before the range", flags)
				}
			}
			if err := b.Trim(0, size); err != nil {
				t.Fatal(err)
			}
			b.ReadAt(got, 1<<20)
			if !bytes.Equal(got, make([]byte, len(got))) {
				t.Fatal("trimmed range does not read as zeroes")
			}
		})
	}
}

func TestCOWNeverWritesBase(t *testing.T) {
	path := tmpFile(t, 1<<20, 0x5a)
	c := nbd.NewCOW(openFile(t, path, true))
	c.WriteAt([]byte("hello"), 4094) // straddles two blocks
	c.Zero(8192, 8192, nbd.ZeroFlags{})
	got := make([]byte, 8)
	c.ReadAt(got, 4092)
	if string(got) != "\x5a\x5ahello\x5a" {
		t.Fatalf("cow read %q", got)
	}
	base, _ := os.ReadFile(path)
	if !bytes.Equal(base, bytes.Repeat([]byte{0x5a}, 1<<20)) {
		t.Fatal("base file was modified")
	}
}

func TestOpenFileRejectsOtherKinds(t *testing.T) {
	if _, err := nbd.OpenFile(t.TempDir(), imagelock.Reader); err == nil {
		t.Fatal("a directory was accepted as an export")
	}
	if _, err := nbd.OpenFile("/dev/null", imagelock.Reader); err == nil {
		t.Fatal("a character device was accepted as an export")
	}
}

func TestParseExportSpec(t *testing.T) {
	tests := []struct {
		in      string
		want    nbd.ExportSpec
		wantErr string
	}{
		{in: "d=file:/tmp/x.img", want: nbd.ExportSpec{Name: "d", Kind: "file", Path: "/tmp/x.img"}},
		{in: "d=file:/tmp/a,b.img,ro", want: nbd.ExportSpec{Name: "d", Kind: "file", Path: "/tmp/a,b.img", ReadOnly: true}},
		{in: "=mem:1G,cow,ro", want: nbd.ExportSpec{Kind: "mem", Size: 1 << 30, ReadOnly: true, COW: true}},
		{in: "m=mem:64KiB", want: nbd.ExportSpec{Name: "m", Kind: "mem", Size: 64 << 10}},
		{in: "file:/x", wantErr: "want NAME=file:PATH"},
		{in: "d=/x", wantErr: "has no type"},
		{in: "d=nfs:/x", wantErr: `unknown type "nfs"`},
		{in: "d=mem:lots", wantErr: "want a byte count"},
		{in: "d=mem:0", wantErr: "more than 0"},
		{in: "d=mem:1G,rw", wantErr: `unknown option "rw"`},
		{in: "d=file:", wantErr: "needs a path"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := nbd.ParseExportSpec(tt.in)
			if tt.wantErr != "" {
				if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tt.wantErr)) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// scribbler is a careless backend without a Zeroer: it writes into the
// buffers handed to WriteAt after storing them.
type scribbler struct{ m *nbd.Mem }

func (s scribbler) ReadAt(p []byte, off int64) (int, error) { return s.m.ReadAt(p, off) }
func (s scribbler) Size() int64                             { return s.m.Size() }
func (s scribbler) Sync() error                             { return nil }
func (s scribbler) WriteAt(p []byte, off int64) (int, error) {
	n, err := s.m.WriteAt(p, off)
	for i := range p {
		p[i] = 0xbd
	}
	return n, err
}

// Zero-filled writes for a backend without a Zeroer never share their
// zeroes: what one backend wrote into them does not reach a later write.
func TestWriteZeroesOwnBuffer(t *testing.T) {
	c := nbdtest.Pair(t, newServer(&nbd.Export{Backend: scribbler{nbd.NewMem(4 << 20)}}), nil)
	for k, r := range []struct{ off, n int64 }{{0, 3 << 20}, {1 << 20, 2<<20 + 5}} {
		if err := c.WriteZeroes(ctx(t), r.off, r.n, 0); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, r.n)
		if _, err := c.ReadAt(got, r.off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, make([]byte, r.n)) {
			t.Fatalf("write-zeroes %d: the range does not read back as zeroes", k)
		}
	}
}
