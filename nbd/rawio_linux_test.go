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

// The raw writer sends both buffers whole even when they are many times
// the socket buffer (partial writes, waits in the poller), keeps the
// write deadline, and reports a peer that went away.
func TestRawWriter(t *testing.T) {
	server, client, rc := tcpPair(t)
	server.(*net.TCPConn).SetWriteBuffer(16 << 10)
	w := newRawWriter(rc)
	a, b := bytes.Repeat([]byte("a"), 3<<20+5), bytes.Repeat([]byte("b"), 1<<20+3)
	got := make(chan []byte)
	go func() {
		buf, _ := io.ReadAll(io.LimitReader(client, int64(len(a)+len(b))))
		got <- buf
	}()
	if n, err := w.writev(a, b); err != nil || n != int64(len(a)+len(b)) {
		t.Fatalf("writev: %d, %v", n, err)
	}
	if buf := <-got; !bytes.Equal(buf, append(append([]byte{}, a...), b...)) {
		t.Fatalf("the peer got %d bytes, not both buffers in order", len(buf))
	}
	// Nobody reads now: the write waits until its deadline.
	server.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := w.Write(a); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("write nobody reads: %v, want os.ErrDeadlineExceeded", err)
	}
	server.SetWriteDeadline(time.Time{})
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
