package nbd_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/imagelock"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
)

// panickyHandler is a user's slog.Handler that panics on the requests it traces
// while armed.
type panickyHandler struct {
	slog.Handler
	armed *atomic.Bool
}

func (h panickyHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h panickyHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h panickyHandler) WithGroup(string) slog.Handler            { return h }
func (h panickyHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "request" && h.armed.Load() {
		panic("handler bug")
	}
	return nil
}

// A session that crashes while it holds part of the server's in-flight
// budget gives it back: after more crashed sessions than the budget has
// shares, another client's read still runs. It hung for ever before.
func TestCrashedSessionsGiveBackTheBudget(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := nbd.OpenFile(path, imagelock.Writer)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var armed atomic.Bool
	armed.Store(true)
	srv := &nbd.Server{
		Exports:     []*nbd.Export{{Name: "f", Backend: f}},
		MaxInflight: 1 << 20, // four shares of 256 KiB
		Logger:      slog.New(panickyHandler{slog.DiscardHandler, &armed}),
	}
	for i := range 6 {
		t.Run("crash", func(t *testing.T) {
			c := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "f"})
			if _, err := c.ReadAt(make([]byte, 256<<10), 0); err == nil {
				t.Fatalf("session %d: a read through a panicking handler succeeded", i)
			}
		})
	}
	armed.Store(false)
	c := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "f"})
	done := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 256<<10), 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("read after the crashes: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a read waits for budget that crashed sessions never gave back")
	}
}

// stuck is a backend whose reads never return until released: a hung
// disk.
type stuck struct {
	*nbd.Mem
	entered chan struct{}
	release chan struct{}
}

func (s stuck) ReadAt(p []byte, off int64) (int, error) {
	s.entered <- struct{}{}
	<-s.release
	return len(p), nil
}

// Shutdown keeps to its ctx when a backend call never returns: it closes
// the connections and returns ctx's error, where it waited for the call
// for ever.
func TestShutdownKeepsToItsContext(t *testing.T) {
	b := stuck{nbd.NewMem(1 << 20), make(chan struct{}, 1), make(chan struct{})}
	defer close(b.release)
	srv := &nbd.Server{Exports: []*nbd.Export{{Name: "s", Backend: b}}, Logger: slog.New(slog.DiscardHandler)}
	c := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "s"})
	go c.ReadAt(make([]byte, 4096), 0)
	<-b.entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the grace period is over before it starts
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctx) }()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Fatalf("Shutdown: %v, want context.Canceled", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown waits for a backend call that never returns, whatever its ctx")
	}
}

// An export a reload took out is let go of once unused: the server keeps
// no reference to it, so its backend's memory can be collected. A set of
// released exports kept every one for the server's life.
func TestRetiredExportsAreFreed(t *testing.T) {
	srv := &nbd.Server{Logger: slog.New(slog.DiscardHandler)}
	freed := make(chan struct{}, 8)
	for range 4 {
		m := nbd.NewMem(1 << 20)
		runtime.AddCleanup(m, func(ch chan struct{}) { ch <- struct{}{} }, freed)
		srv.SetExports([]*nbd.Export{{Name: "d", Backend: m}})
	}
	srv.SetExports(nil)
	defer runtime.KeepAlive(srv) // the server lives on; only what it let go of may go
	for range 50 {
		runtime.GC()
		if len(freed) == 4 {
			return
		}
		runtime.Gosched()
	}
	t.Fatalf("%d of 4 retired exports freed after 50 collections", len(freed))
}

// ServeConn keeps to its ctx for the whole session, not only the
// handshake: a client that sends nothing more is let go of once ctx ends.
func TestServeConnKeepsToItsContext(t *testing.T) {
	srv := &nbd.Server{Exports: []*nbd.Export{{Name: "m", Backend: nbd.NewMem(1 << 20)}}, Logger: slog.New(slog.DiscardHandler)}
	a, b := nbdtest.SocketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.ServeConn(ctx, a) }()
	hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer hcancel()
	c, err := nbd.NewClient(hctx, b, &nbd.ClientConfig{Export: "m"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel() // the client is in transmission and idle
	select {
	case <-served:
	case <-time.After(20 * time.Second):
		t.Fatal("ServeConn goes on serving after its ctx ended")
	}
}
