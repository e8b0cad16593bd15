package nbd

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/internal/unixpair"
)

func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	a, b, err := unixpair.Conns("test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// detachedPair returns a detached socket, closed when the test ends, and
// its peer.
func detachedPair(t *testing.T) (*fdConn, net.Conn) {
	t.Helper()
	a, b := socketPair(t)
	d, err := detach(a, &waiter{}, connLimits{maxBlocked: DefaultMaxBlocked})
	if err != nil {
		t.Fatal(err)
	}
	fc, ok := d.(*fdConn)
	if !ok {
		t.Fatalf("detach(%T) = %T, want *fdConn", a, d)
	}
	t.Cleanup(func() { fc.Close() })
	return fc, b
}

func TestDetachKeepsTheSocketAndClosesTheOriginal(t *testing.T) {
	a, b := socketPair(t)
	d, err := detach(a, &waiter{}, connLimits{maxBlocked: DefaultMaxBlocked})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, ok := d.(*fdConn); !ok {
		t.Fatalf("detach(%T) = %T, want *fdConn", a, d)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on the original after detach: %v, want net.ErrClosed", err)
	}
	if d.RemoteAddr() != a.RemoteAddr() || d.LocalAddr() != a.LocalAddr() {
		t.Fatal("addresses not kept")
	}
	// Large enough to fill the socket buffer several times: Writev must
	// finish partial writes.
	want := make([]byte, 8<<20)
	rand.Read(want)
	errc := make(chan error, 1)
	go func() {
		_, err := d.(*fdConn).Writev([][]byte{want[:100], want[100 : 5<<20], want[5<<20:]})
		errc <- err
	}()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes differ after Writev")
	}
	b.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(d, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
	b.Close()
	if n, err := d.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("read after the peer closed: %d, %v; want 0, io.EOF", n, err)
	}
}

func TestDetachedConnUnblocks(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stop    func(c *fdConn) error
		wantErr error // nil: any error will do
		closed  bool  // later calls must fail with net.ErrClosed
	}{
		{"CloseRead", (*fdConn).CloseRead, io.EOF, false},
		{"Close", (*fdConn).Close, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := detachedPair(t)
			errc := make(chan error, 1)
			go func() {
				_, err := d.Read(make([]byte, 10))
				errc <- err
			}()
			time.Sleep(20 * time.Millisecond) // let the read block
			if err := tc.stop(d); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-errc:
				if err == nil || tc.wantErr != nil && err != tc.wantErr {
					t.Fatalf("blocked read returned %v, want %v", err, tc.wantErr)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("blocked read did not return")
			}
			if tc.closed {
				if _, err := d.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
					t.Fatalf("read after Close: %v, want net.ErrClosed", err)
				}
				if err := d.Close(); !errors.Is(err, net.ErrClosed) {
					t.Fatalf("second Close: %v, want net.ErrClosed", err)
				}
			}
		})
	}
}

// ReadSpin returns what arrives while it polls, what arrives after it
// gave up polling and blocked, and the end of the stream.
func TestReadSpin(t *testing.T) {
	for _, tc := range []struct {
		name    string
		after   time.Duration // when the peer writes
		data    string        // "" closes instead
		wantErr error
	}{
		{"waiting", 0, "abc", nil},
		{"while polling", 100 * time.Microsecond, "abc", nil},
		{"after polling", 30 * time.Millisecond, "abc", nil},
		{"peer closes", 30 * time.Millisecond, "", io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, b := detachedPair(t)
			go func() {
				time.Sleep(tc.after)
				if tc.data == "" {
					b.Close()
					return
				}
				b.Write([]byte(tc.data))
			}()
			buf := make([]byte, 16)
			n, err := d.ReadSpin(buf, time.Millisecond)
			if err != tc.wantErr || string(buf[:n]) != tc.data {
				t.Fatalf("ReadSpin = %q, %v; want %q, %v", buf[:n], err, tc.data, tc.wantErr)
			}
		})
	}
	d, _ := detachedPair(t)
	d.Close()
	if _, err := d.ReadSpin(make([]byte, 1), time.Millisecond); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadSpin after Close: %v, want net.ErrClosed", err)
	}
}

// farConn is a connection from a remote address.
type farConn struct{ net.Conn }

func (farConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 10809} }

func TestOnThisMachine(t *testing.T) {
	unixConn, _ := socketPair(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tcpConn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tcpConn.Close()
	for _, tc := range []struct {
		name string
		c    net.Conn
		want bool
	}{
		{"unix", unixConn, true},
		{"tcp loopback", tcpConn, true},
		{"tcp remote", farConn{tcpConn}, false},
	} {
		if got := onThisMachine(tc.c); got != tc.want {
			t.Errorf("%s: onThisMachine = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSpliceFileToSocket(t *testing.T) {
	path := t.TempDir() + "/img"
	want := make([]byte, 3<<20)
	rand.Read(want)
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, b := detachedPair(t)
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
		go func() { errc <- d.spliceFrom(p.r, tc.n) }()
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
