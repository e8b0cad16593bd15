package nbd

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"syscall"
	"testing"

	"github.com/nbdlab/nbdlab/imagelock"
	"github.com/nbdlab/nbdlab/internal/unixpair"
)

func TestSpliceFileToSocket(t *testing.T) {
	path := t.TempDir() + "/img"
	want := make([]byte, 3<<20)
	rand.Read(want)
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path, imagelock.Reader)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a, b, err := unixpair.Conns("test")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	rc, err := a.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var pool pipePool
	defer pool.closeAll()
	p, err := pool.get()
	if err != nil {
		t.Fatal(err)
	}
	size, pg := p.size, os.Getpagesize() // pipeSize, unless the kernel gave less
	pool.put(p, true)
	for _, tc := range []struct{ off, n int }{{0, min(128<<10, size)}, {pg - 1, size - pg}, {2 << 20, size}} {
		p, err := pool.get()
		if err != nil {
			t.Fatal(err)
		}
		if err := f.fillPipe(p.w, int64(tc.off), tc.n); err != nil {
			t.Fatalf("fillPipe(%d, %d): %v", tc.off, tc.n, err)
		}
		errc := make(chan error, 1)
		go func() { errc <- newRawWriter(rc, nil, 0).splice(p.r, tc.n) }()
		got := make([]byte, tc.n)
		if _, err := io.ReadFull(b, got); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[tc.off:tc.off+tc.n]) {
			t.Fatalf("spliced bytes at %d+%d differ from the file", tc.off, tc.n)
		}
		pool.put(p, true)
	}
	// More pages than the pipe has buffers: the copying path, not a hang.
	p, _ = pool.get()
	if err := f.fillPipe(p.w, int64(pg-1), p.size); !errors.Is(err, errCopyInstead) {
		t.Fatalf("fillPipe of %d pages into a %d-page pipe: %v, want errCopyInstead", p.size/pg+1, p.size/pg, err)
	}
	pool.put(p, false)
	// Past the end of the file: an error before anything reaches the
	// client, and the pipe is not reused.
	p, _ = pool.get()
	if err := f.fillPipe(p.w, 3<<20-100, 200); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("fillPipe past the end: %v, want io.ErrUnexpectedEOF", err)
	}
	pool.put(p, false)
}
