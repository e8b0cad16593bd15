package unixpair

import (
	"io"
	"net"
	"testing"
)

func TestPairCarriesBothWays(t *testing.T) {
	f, b, err := New("test")
	if err != nil {
		t.Fatal(err)
	}
	a, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	c, d, err := Conns("test")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][2]net.Conn{{a, b}, {b, a}, {c, d}, {d, c}} {
		go p[0].Write([]byte("ping"))
		got := make([]byte, 4)
		if _, err := io.ReadFull(p[1], got); err != nil || string(got) != "ping" {
			t.Fatalf("read %q, %v", got, err)
		}
	}
	a.Close()
	if n, err := b.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the other end closed: %d, %v; want EOF", n, err)
	}
	for _, x := range []net.Conn{b, c, d} {
		x.Close()
	}
}
