package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
)

// gated is a memory export whose reads at off wait until release is
// closed, and say when they start.
type gated struct {
	*nbd.Mem
	off     int64
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func newGated(off int64) *gated {
	return &gated{Mem: nbd.NewMem(1 << 20), off: off, started: make(chan struct{}), release: make(chan struct{})}
}

func (g *gated) ReadAt(p []byte, off int64) (int, error) {
	if off == g.off {
		g.once.Do(func() { close(g.started) })
		<-g.release
	}
	return g.Mem.ReadAt(p, off)
}

// A caller that gives up on a read gets its buffer back for good: the
// late reply is read and dropped, and the connection goes on.
func TestCancelledDoDropsLateReply(t *testing.T) {
	for _, structured := range []bool{false, true} {
		g := newGated(8192)
		g.Mem.WriteAt(bytes.Repeat([]byte{0x55}, 4096), 8192)
		c := nbdtest.Pair(t, newServer(&nbd.Export{Backend: g}), &nbd.ClientConfig{NoStructuredReplies: !structured})
		buf := make([]byte, 4096)
		cctx, cancel := context.WithCancel(ctx(t))
		errc := make(chan error, 1)
		go func() {
			_, err := c.Do(cctx, nbd.Request{Cmd: nbd.CmdRead, Offset: 8192, Length: 4096}, buf)
			errc <- err
		}()
		<-g.started
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("structured=%v: Do after cancel: %v, want context.Canceled", structured, err)
		}
		// The buffer is the caller's again: it writes it while the late
		// reply arrives (a data race under -race if the client still
		// copied into it).
		close(g.release)
		for range 100 {
			for i := range buf {
				buf[i] = 0xaa
			}
		}
		if _, err := c.ReadAt(make([]byte, 512), 0); err != nil {
			t.Fatalf("structured=%v: a read after the abandoned one: %v", structured, err)
		}
		if buf[0] != 0xaa || buf[4095] != 0xaa {
			t.Fatalf("structured=%v: the abandoned read's late reply was copied into the caller's buffer", structured)
		}
	}
}

// A panic in Server.Record, called as each request is read, ends that
// session, not the server; also when the request is read while another
// is stuck in the backend.
func TestPanicInRecordEndsOnlyThatSession(t *testing.T) {
	g := newGated(0)
	defer close(g.release)
	srv := newServer(&nbd.Export{Backend: g})
	srv.Record = func(r nbd.Recorded) {
		if r.Offset == 4096 {
			panic("record crashed")
		}
	}
	addr := listen(t, srv)
	bad, err := nbd.Dial(ctx(t), addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	go bad.ReadAt(make([]byte, 512), 0)
	<-g.started
	time.Sleep(50 * time.Millisecond)
	if _, err := bad.ReadAt(make([]byte, 512), 4096); err == nil {
		t.Fatal("the read whose Record panicked was answered")
	}
	good, err := nbd.Dial(ctx(t), addr, nil)
	if err != nil {
		t.Fatalf("a new client after the crash: %v", err)
	}
	defer good.Close()
	if _, err := good.ReadAt(make([]byte, 512), 8192); err != nil {
		t.Fatalf("a new client after the crash: %v", err)
	}
}

// The idle timeout counts from the last reply: a request that runs longer
// than it does not make the connection idle, even when others are read
// and answered while it runs.
func TestIdleTimeoutSparesSlowRequest(t *testing.T) {
	g := newGated(0)
	srv := newServer(&nbd.Export{Backend: g})
	srv.IdleTimeout = 200 * time.Millisecond
	c, err := nbd.Dial(ctx(t), listen(t, srv), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 512), 0)
		errc <- err
	}()
	<-g.started
	time.Sleep(50 * time.Millisecond)
	if _, err := c.ReadAt(make([]byte, 512), 4096); err != nil {
		t.Fatalf("a read while another is stuck: %v", err)
	}
	time.Sleep(800 * time.Millisecond) // four idle timeouts
	close(g.release)
	if err := <-errc; err != nil {
		t.Fatalf("a read that ran 800ms with a 200ms idle timeout: %v", err)
	}
	if _, err := c.ReadAt(make([]byte, 512), 512); err != nil {
		t.Fatalf("a read right after it: %v", err)
	}
}

// A client that hangs up between requests ends its session cleanly; one
// that hangs up in the middle of a request header ends it with an error
// that says so.
func TestHangUpMidHeader(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sent    int // bytes of a request header sent before hanging up
		wantErr bool
	}{{"between requests", 0, false}, {"mid-header", 13, true}, {"all but one byte", 27, true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(&nbd.Export{Backend: nbd.NewMem(1 << 20)})
			a, b := nbdtest.SocketPair(t)
			done := make(chan error, 1)
			go func() { done <- srv.ServeConn(context.Background(), a) }()
			_, conn, err := nbd.Negotiate(ctx(t), b, nil)
			if err != nil {
				t.Fatal(err)
			}
			hdr := nbd.AppendRequestHeader(nil, nbd.Request{Cmd: nbd.CmdRead, Length: 512}, 1)
			conn.Write(hdr[:tc.sent])
			conn.Close()
			select {
			case err := <-done:
				if (err != nil) != tc.wantErr || (err != nil && !strings.Contains(err.Error(), "read request: unexpected EOF")) {
					t.Fatalf("session ended with %v; want an error %v", err, tc.wantErr)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the session did not end in 10s")
			}
		})
	}
}
