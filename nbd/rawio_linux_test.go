package nbd

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a TCP connection on loopback, and the
// server end's RawConn.
func tcpPair(t *testing.T) (server, client net.Conn, rc syscall.RawConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	rc, err = server.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return server, client, rc
}

// The raw reader reads what was sent, waits in the poller for what has
// not come yet, keeps the read deadline, and ends with io.EOF, or with
// net.ErrClosed once the connection is closed.
func TestRawReader(t *testing.T) {
	server, client, rc := tcpPair(t)
	r := newRawReader(rc)
	go func() {
		client.Write([]byte("now"))
		time.Sleep(50 * time.Millisecond) // the reader waits in the poller
		client.Write([]byte(" and later"))
	}()
	got := make([]byte, len("now and later"))
	if _, err := io.ReadFull(r, got); err != nil || string(got) != "now and later" {
		t.Fatalf("read %q, %v", got, err)
	}
	server.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := r.Read(got); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	server.SetReadDeadline(time.Time{})
	client.Close()
	if n, err := r.Read(got); n != 0 || err != io.EOF {
		t.Errorf("read after the peer closed: %d, %v; want io.EOF", n, err)
	}
	server.Close()
	if _, err := r.Read(got); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read of a closed connection: %v, want net.ErrClosed", err)
	}
}

// countDeadlines counts the write deadlines a rawWriter sets on a
// connection, and sets them.
type countDeadlines struct {
	net.Conn
	set int
}

func (c *countDeadlines) SetWriteDeadline(t time.Time) error {
	c.set++
	return c.Conn.SetWriteDeadline(t)
}

// The raw writer sends both buffers whole even when they are many times
// the socket buffer (partial writes, waits in the poller), gives up on a
// peer that takes nothing for its timeout, and reports a peer that went
// away. A write that never waits sets no deadline, and one that waited
// leaves none behind.
func TestRawWriter(t *testing.T) {
	server, client, rc := tcpPair(t)
	server.(*net.TCPConn).SetWriteBuffer(16 << 10)
	dl := &countDeadlines{Conn: server}
	w := newRawWriter(rc, dl, 300*time.Millisecond)
	for range 100 {
		if _, err := w.Write([]byte("small")); err != nil {
			t.Fatal(err)
		}
	}
	if dl.set != 0 {
		t.Errorf("100 writes that did not wait set %d deadlines; want none", dl.set)
	}
	io.ReadFull(client, make([]byte, 100*len("small")))
	a, b := bytes.Repeat([]byte("a"), 3<<20+5), bytes.Repeat([]byte("b"), 1<<20+3)
	start := time.Now()
	if _, err := w.writev(a, b); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("writev to a peer that takes nothing: %v; want os.ErrDeadlineExceeded (timeout 300ms)", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the write gave up after %v; want about 300ms", took)
	}

	// A peer that reads, slowly: a write that keeps moving ends well,
	// however long it takes in all, and leaves no deadline behind to
	// fail the next one.
	server, client, rc = tcpPair(t)
	server.(*net.TCPConn).SetWriteBuffer(16 << 10)
	dl = &countDeadlines{Conn: server}
	w = newRawWriter(rc, dl, 300*time.Millisecond)
	got := make(chan []byte)
	go func() {
		var buf []byte
		p := make([]byte, 512<<10)
		for len(buf) < len(a)+len(b) {
			time.Sleep(20 * time.Millisecond)
			n, err := client.Read(p)
			if err != nil {
				break
			}
			buf = append(buf, p[:n]...)
		}
		got <- buf
	}()
	if n, err := w.writev(a, b); err != nil || n != int64(len(a)+len(b)) {
		t.Fatalf("writev: %d, %v", n, err)
	}
	if buf := <-got; !bytes.Equal(buf, append(append([]byte{}, a...), b...)) {
		t.Fatalf("the peer got %d bytes, not both buffers in order", len(buf))
	}
	if dl.set == 0 {
		t.Errorf("a write that waited set no deadline")
	}
	time.Sleep(400 * time.Millisecond) // past any deadline the write might have left
	if _, err := w.Write([]byte("x")); err != nil {
		t.Fatalf("a write after a wait that ended well: %v", err)
	}
	client.(*net.TCPConn).SetLinger(0)
	client.Close() // a reset
	time.Sleep(20 * time.Millisecond)
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		_, err = w.Write([]byte("x"))
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Errorf("write to a peer that reset: %v, want ECONNRESET or EPIPE", err)
	}
}
