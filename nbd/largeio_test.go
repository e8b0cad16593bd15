package nbd_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/nbdlab/nbdlab/imagelock"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
)

// chunks. They must land whole, at any alignment, while other writes
// stream in behind them and readers read the same ranges.
func TestLargeWritesToMemory(t *testing.T) {
	m := nbd.NewMem(64 << 20)
	srv := newServer(&nbd.Export{Backend: m})
	c := nbdtest.Pair(t, srv, nil)
	reader := nbdtest.Pair(t, srv, nil)
	writes := []struct{ off, n int }{{0, 1 << 20}, {1<<20 + 5, 3<<20 - 5}, {4<<20 + 4096, 64<<10 + 1}, {5 << 20, 3 << 20}}
	fill := func(client, w, pass int) byte { return byte(client*len(writes) + w + 1 + pass*64) }
	data := map[byte][]byte{}
	for pass := range 2 {
		for i := range 8 {
			for j := range writes {
				data[fill(i, j, pass)] = bytes.Repeat([]byte{fill(i, j, pass)}, 3<<20)
			}
		}
	}
	stop := make(chan struct{})
	readerDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 2<<20)
		for off := int64(0); ; off = (off + 3<<20 + 4097) % (62 << 20) {
			select {
			case <-stop:
				readerDone <- nil
				return
			default:
			}
			if _, err := reader.ReadAt(buf, off); err != nil {
				readerDone <- err
				return
			}
		}
	}()
	for pass := range 2 { // the second pass replaces chunks the first allocated
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j, w := range writes {
					if _, err := c.WriteAt(data[fill(i, j, pass)][:w.n], int64(i<<23+w.off)); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
	}
	close(stop)
	if err := <-readerDone; err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64<<20)
	if _, err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		for j, w := range writes {
			if b := got[i<<23+w.off:][:w.n]; bytes.Count(b, []byte{fill(i, j, 1)}) != w.n {
				t.Fatalf("write %d of client %d (%d bytes at %d) did not land whole", j, i, w.n, i<<23+w.off)
			}
		}
		if b := got[i<<23+1<<20:][:5]; !bytes.Equal(b, make([]byte, 5)) {
			t.Fatalf("client %d: the 5 bytes no write covers hold %v", i, b)
		}
	}
}

// A client that dies halfway through a large write to memory leaves every
// 64 KiB chunk either as it was or wholly written, nothing after the cut
// changed, and the server serving the others.
func TestWriteCutShort(t *testing.T) {
	srv := newServer(&nbd.Export{Backend: nbd.NewMem(8 << 20)})
	good := nbdtest.Pair(t, srv, nil)
	old := bytes.Repeat([]byte{0xee}, 1<<20)
	if _, err := good.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	bad := nbdtest.Pair(t, srv, nil)
	hdr := nbd.AppendRequestHeader(nil, nbd.Request{Cmd: nbd.CmdWrite, Length: 1 << 20}, 0)
	const sent = 300 << 10
	if _, err := bad.Conn().Write(append(hdr, bytes.Repeat([]byte{0x11}, sent)...)); err != nil {
		t.Fatal(err)
	}
	bad.Conn().Close()
	got := make([]byte, 1<<20)
	if _, err := good.ReadAt(got, 0); err != nil {
		t.Fatalf("the other session after a cut write: %v", err)
	}
	const chunk = 64 << 10
	for off := 0; off < len(got); off += chunk {
		c := got[off : off+chunk]
		whole := bytes.Count(c, []byte{0x11}) == chunk
		if !bytes.Equal(c, old[:chunk]) && (!whole || off+chunk > sent) {
			t.Fatalf("chunk at %d neither as it was nor wholly written", off)
		}
	}
}

// Large reads from a file export are spliced; they must carry the file's
// bytes, and a read the file can no longer satisfy must fail alone.
func TestLargeFileReads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	want := make([]byte, 4<<20)
	for i := range want {
		want[i] = byte(i * 31 >> 7)
	}
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := nbd.OpenFile(path, imagelock.Writer)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, cfg := range []*nbd.ClientConfig{nil, {NoStructuredReplies: true}} {
		c := nbdtest.Pair(t, newServer(&nbd.Export{Backend: f}), cfg)
		for _, r := range []struct{ off, n int }{{0, 4096}, {1, 128 << 10}, {1 << 20, 1 << 20}, {4095, 1 << 20}, {12345, 2<<20 + 7}} {
			got := make([]byte, r.n)
			if _, err := c.ReadAt(got, int64(r.off)); err != nil {
				t.Fatalf("read %d at %d: %v", r.n, r.off, err)
			}
			if !bytes.Equal(got, want[r.off:r.off+r.n]) {
				t.Fatalf("read %d at %d: bytes differ", r.n, r.off)
			}
		}
		// Shrink the file behind the server's back: the read past the new
		// end fails, the session goes on.
		if err := os.Truncate(path, 1<<20); err != nil {
			t.Fatal(err)
		}
		if _, err := c.ReadAt(make([]byte, 1<<20), 2<<20); !errors.Is(err, nbd.EIO) {
			t.Fatalf("read past the shrunk file: %v, want EIO", err)
		}
		got := make([]byte, 256<<10)
		if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, want[:len(got)]) {
			t.Fatalf("read after the failed one: %v", err)
		}
		if err := os.WriteFile(path, want, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
