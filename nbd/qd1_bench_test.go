package nbd_test

import (
	"github.com/nbdlab/nbdlab/imagelock"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/nbdlab/nbdlab/nbd"
)

// BenchmarkServerQD1 is one client's 4k writes and reads, one at a time,
// over TCP on loopback, against a file export: what a request costs the
// server (and this client) end to end.
func BenchmarkServerQD1(b *testing.B) {
	path := filepath.Join(b.TempDir(), "img")
	if err := os.WriteFile(path, make([]byte, 16<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := nbd.OpenFile(path, imagelock.Writer)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	srv := newServer(&nbd.Export{Name: "d", Backend: f})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	c, err := nbd.Dial(ctx(b), l.Addr().String(), &nbd.ClientConfig{Export: "d"})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		off := int64(i%4096) * 4096
		if i%2 == 0 {
			_, err = c.WriteAt(buf, off)
		} else {
			_, err = c.ReadAt(buf, off)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}
