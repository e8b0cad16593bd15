package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/imagelock"
	"github.com/nbdlab/nbdlab/internal/procfs"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
)

// listen serves srv on a unix socket for the test and returns its address.
func listen(t *testing.T, srv *nbd.Server) string {
	t.Helper()
	addr := "unix:" + filepath.Join(t.TempDir(), "nbd.sock")
	l, err := nbd.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return addr
}

// closedWithin reports whether the server closes c within d, reading and
// dropping whatever it sends first.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	return err == nil || !errors.Is(err, os.ErrDeadlineExceeded)
}

func TestMaxConnections(t *testing.T) {
	srv := newServer(&nbd.Export{Backend: nbd.NewMem(1 << 20)})
	srv.MaxConnections = 2
	addr := listen(t, srv)
	var held []*nbd.Client
	for range 2 {
		c, err := nbd.Dial(ctx(t), addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	if c, err := nbd.Dial(ctx(t), addr, nil); err == nil {
		c.Close()
		t.Fatal("a third connection was served over MaxConnections 2")
	}
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := nbd.Dial(ctx(t), addr, nil)
		if err == nil {
			if _, err := c.ReadAt(make([]byte, 512), 0); err != nil {
				t.Fatal(err)
			}
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after one of two left: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := held[1].ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatalf("a connection served before the refusals: %v", err)
	}
	held[1].Close()
}

// A client that stops half way through the handshake, or sends option
// after option, is dropped; the server goes on.
func TestHandshakeLimits(t *testing.T) {
	srv := newServer(&nbd.Export{Name: "e", Backend: nbd.NewMem(1 << 20)})
	srv.HandshakeTimeout = 300 * time.Millisecond
	addr := listen(t, srv)
	a, _ := nbd.ParseAddr(addr)
	for _, tt := range []struct {
		name string
		send []byte
	}{
		{"silent", nil},
		{"flags, then nothing", []byte{0, 0, 0, 3}},
		{"half an option", append([]byte{0, 0, 0, 3}, "IHAVEOPT"...)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := a.DialConn(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(tt.send)
			if !closedWithin(c, 5*time.Second) {
				t.Fatal("a stalled handshake was not dropped in 5s (timeout 300ms)")
			}
		})
	}
	t.Run("endless options", func(t *testing.T) {
		// A server of its own, whose handshake timeout cannot be what
		// ends the session.
		patient := newServer(&nbd.Export{Backend: nbd.NewMem(1 << 20)})
		patient.HandshakeTimeout = time.Minute
		pa, _ := nbd.ParseAddr(listen(t, patient))
		c, err := pa.DialConn(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		b := []byte{0, 0, 0, 3}
		for range 5000 {
			b = append(append(b, "IHAVEOPT"...), 0, 0, 0, 3, 0, 0, 0, 0) // NBD_OPT_LIST, no data
		}
		go c.Write(b)
		if !closedWithin(c, 5*time.Second) {
			t.Fatal("5000 options were all taken, and the session went on")
		}
	})
	c, err := nbd.Dial(ctx(t), addr, &nbd.ClientConfig{Export: "e"})
	if err != nil {
		t.Fatalf("the server after the dropped handshakes: %v", err)
	}
	c.Close()
}

func TestIdleTimeout(t *testing.T) {
	srv := newServer(&nbd.Export{Backend: nbd.NewMem(1 << 20)})
	srv.IdleTimeout = 300 * time.Millisecond
	addr := listen(t, srv)
	c, err := nbd.Dial(ctx(t), addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	for i := range 12 { // a client that keeps asking is never idle
		time.Sleep(100 * time.Millisecond)
		if _, err := c.ReadAt(make([]byte, 1), 0); err != nil {
			t.Fatalf("read %d, 100ms after the one before: %v", i, err)
		}
	}
	time.Sleep(2500 * time.Millisecond) // idle: 300ms, seen within a second
	if _, err := c.ReadAt(make([]byte, 1), 0); !errors.Is(err, nbd.ErrClientClosed) {
		t.Fatalf("a read after idling 2.5s: %v; want the connection closed (idle timeout 300ms)", err)
	}
}

// A client that asks and never reads the replies is dropped after the
// write timeout, and holds no more than its budget meanwhile: whether
// the replies are copied (memory) or spliced from a file's pages.
func TestWriteTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, bytes.Repeat([]byte{7}, 64<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	file, err := nbd.OpenFile(path, imagelock.Reader)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	for _, tc := range []struct {
		name    string
		backend nbd.Backend
	}{{"memory", nbd.NewMem(64 << 20)}, {"file, spliced", file}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(&nbd.Export{Backend: tc.backend})
			srv.WriteTimeout = 500 * time.Millisecond
			a, b := nbdtest.SocketPair(t)
			done := make(chan error, 1)
			go func() { done <- srv.ServeConn(context.Background(), a) }()
			info, conn, err := nbd.Negotiate(ctx(t), b, &nbd.ClientConfig{NoStructuredReplies: true})
			if err != nil {
				t.Fatal(err)
			}
			var reqs []byte
			for i := range 64 {
				reqs = nbd.AppendRequestHeader(reqs, nbd.Request{Cmd: nbd.CmdRead, Offset: uint64(i) << 20 % uint64(info.Size), Length: 1 << 20}, uint64(i))
			}
			go conn.Write(reqs)
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("the session ended cleanly; want a write timeout")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a client reading no replies was not dropped in 10s (write timeout 500ms)")
			}
			conn.Close()
		})
	}
}

// threads returns how many threads this process has.
func threads(t *testing.T) int {
	n, err := procfs.Status(os.Getpid(), "Threads")
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// Idle clients hold no thread each, and one goroutine each: each waits in
// the runtime's poller, and every one of them is still served.
func TestIdleClientsHoldNoThreads(t *testing.T) {
	const clients = 300
	srv := newServer(&nbd.Export{Backend: nbd.NewMem(1 << 20)})
	addr := listen(t, srv)
	before, goroutines := threads(t), runtime.NumGoroutine()
	var cs []*nbd.Client
	for range clients {
		c, err := nbd.Dial(ctx(t), addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cs = append(cs, c)
	}
	// Let every session reach its transmission phase.
	for i, c := range cs {
		if _, err := c.ReadAt(make([]byte, 4096), int64(i)*512); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	if n := threads(t); n > before+24 {
		t.Fatalf("%d idle clients: %d threads, %d before; want at most 24 more", clients, n, before)
	}
	// A client holds its own reader goroutine, the server one worker
	// and the goroutine of its accept loop's connection.
	if n := runtime.NumGoroutine() - goroutines; n > clients*4 {
		t.Fatalf("%d idle clients: %d more goroutines; want at most %d", clients, n, clients*4)
	}
	for i, c := range cs {
		if _, err := c.ReadAt(make([]byte, 4096), int64(i)*512); err != nil {
			t.Fatalf("client %d after idling: %v", i, err)
		}
	}
}
