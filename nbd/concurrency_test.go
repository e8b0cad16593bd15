package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
)

// gate is a backend whose reads at offset 0 wait until released.
type gate struct {
	*nbd.Mem
	release chan struct{}
	started chan struct{}
}

func (g *gate) ReadAt(p []byte, off int64) (int, error) {
	if off == 0 {
		close(g.started)
		<-g.release
	}
	return g.Mem.ReadAt(p, off)
}

func TestSlowRequestDoesNotBlockFastOnes(t *testing.T) {
	g := &gate{Mem: nbd.NewMem(1 << 20), release: make(chan struct{}), started: make(chan struct{})}
	srv := newServer(&nbd.Export{Backend: g})
	c := nbdtest.Pair(t, srv, nil)
	release := sync.OnceFunc(func() { close(g.release) })
	defer release() // on failure too: the session cannot end while the read waits
	slow := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 4096), 0)
		slow <- err
	}()
	<-g.started
	// With a deadline: if the slow read held the others up, they fail
	// instead of hanging the suite.
	for i := 1; i <= 10; i++ {
		if _, err := c.Do(ctx(t), nbd.Request{Cmd: nbd.CmdRead, Offset: uint64(i) * 4096, Length: 4096}, make([]byte, 4096)); err != nil {
			t.Fatalf("fast read %d behind the slow one: %v", i, err)
		}
	}
	select {
	case <-slow:
		t.Fatal("slow read finished before it was released")
	default:
	}
	release()
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
}

// slowDisk stands for a backend that waits for a device: every read
// takes a few milliseconds. It records how many reads ran at once.
type slowDisk struct {
	*nbd.Mem
	now, most atomic.Int32
}

func (d *slowDisk) ReadAt(p []byte, off int64) (int, error) {
	n := d.now.Add(1)
	for m := d.most.Load(); n > m && !d.most.CompareAndSwap(m, n); m = d.most.Load() {
	}
	time.Sleep(2 * time.Millisecond)
	d.now.Add(-1)
	return d.Mem.ReadAt(p, off)
}

// Small requests run on the connection's reader, one after another, only
// while the backend answers at once; a slow one makes the next ones run
// side by side.
func TestSlowBackendGetsConcurrentRequests(t *testing.T) {
	d := &slowDisk{Mem: nbd.NewMem(1 << 20)}
	c := nbdtest.Pair(t, newServer(&nbd.Export{Backend: d}), nil)
	var wg sync.WaitGroup
	for round := 0; round < 4; round++ {
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := c.ReadAt(make([]byte, 4096), int64(i)*4096); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	if got := d.most.Load(); got < 2 {
		t.Fatalf("at most %d read ran at once; want reads to overlap once the backend proved slow", got)
	}
}

// stuckWrite is a backend whose first write at offset 0 waits until
// released, holding on to its payload the while.
type stuckWrite struct {
	*nbd.Mem
	once    sync.Once
	started chan struct{}
	release chan struct{}
}

func (s *stuckWrite) WriteAt(p []byte, off int64) (int, error) {
	if off == 0 {
		s.once.Do(func() {
			close(s.started)
			<-s.release
		})
	}
	return s.Mem.WriteAt(p, off)
}

// A small write stuck on the reader long enough for the stall watch to
// give the reader role away must still write its own bytes, although the
// requests read after it came through the same connection.
func TestStuckWriteKeepsItsPayload(t *testing.T) {
	b := &stuckWrite{Mem: nbd.NewMem(1 << 20), started: make(chan struct{}), release: make(chan struct{})}
	c := nbdtest.Pair(t, newServer(&nbd.Export{Backend: b}), nil)
	release := sync.OnceFunc(func() { close(b.release) })
	defer release() // on failure too: the session cannot end while the write waits
	block := func(i int) []byte { return bytes.Repeat([]byte{byte(i + 1)}, 4096) }
	stuck := make(chan error, 1)
	go func() {
		_, err := c.WriteAt(block(0), 0)
		stuck <- err
	}()
	<-b.started
	for i := 1; i < 64; i++ {
		if _, err := c.Do(ctx(t), nbd.Request{Cmd: nbd.CmdWrite, Offset: uint64(i) * 4096, Length: 4096, Data: block(i)}, nil); err != nil {
			t.Fatalf("write %d behind the stuck one: %v", i, err)
		}
	}
	release()
	if err := <-stuck; err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64*4096)
	if _, err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for i := range 64 {
		if blk := got[i*4096 : (i+1)*4096]; !bytes.Equal(blk, block(i)) {
			t.Fatalf("block %d holds %d..., want %d", i, blk[0], i+1)
		}
	}
}

// Large writes to memory go straight from the socket into the export's

type panicky struct{ *nbd.Mem }

func (panicky) ReadAt([]byte, int64) (int, error) { panic("backend bug") }

func TestPanicInBackendIsContained(t *testing.T) {
	srv := newServer(&nbd.Export{Name: "p", Backend: panicky{nbd.NewMem(4096)}}, &nbd.Export{Name: "ok", Backend: nbd.NewMem(4096)})
	p := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "p"})
	ok := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "ok"})
	if _, err := p.ReadAt(make([]byte, 1), 0); !errors.Is(err, nbd.EIO) {
		t.Fatalf("read from panicking backend: got %v, want EIO", err)
	}
	if _, err := ok.ReadAt(make([]byte, 1), 0); err != nil {
		t.Fatalf("other session: %v", err)
	}
}

// syncCounter counts Syncs and delays writes so they are in flight at
// shutdown.
type syncCounter struct {
	*nbd.Mem
	syncs   atomic.Int32
	started chan struct{}
	once    sync.Once
}

func (s *syncCounter) WriteAt(p []byte, off int64) (int, error) {
	s.once.Do(func() { close(s.started) })
	time.Sleep(100 * time.Millisecond)
	return s.Mem.WriteAt(p, off)
}
func (s *syncCounter) Sync() error { s.syncs.Add(1); return nil }

func TestShutdownFinishesInFlightAndFlushes(t *testing.T) {
	b := &syncCounter{Mem: nbd.NewMem(1 << 20), started: make(chan struct{})}
	srv := newServer(&nbd.Export{Backend: b})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	c, err := nbd.Dial(ctx(t), "unix:"+l.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wrote := make(chan error, 1)
	go func() {
		_, err := c.WriteAt([]byte("in flight"), 0)
		wrote <- err
	}()
	<-b.started // the write is in flight in the server
	if err := srv.Shutdown(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("write in flight at shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, nbd.ErrServerClosed) {
		t.Fatalf("Serve returned %v, want ErrServerClosed", err)
	}
	if b.syncs.Load() == 0 {
		t.Fatal("shutdown did not flush the export")
	}
	got := make([]byte, 9)
	b.Mem.ReadAt(got, 0)
	if string(got) != "in flight" {
		t.Fatalf("data = %q", got)
	}
}

// held is a backend whose reads wait until released, each saying when it
// started.
type held struct {
	*nbd.Mem
	started chan struct{}
	release chan struct{}
}

func (h *held) ReadAt(p []byte, off int64) (int, error) {
	h.started <- struct{}{}
	<-h.release
	return h.Mem.ReadAt(p, off)
}

// Small reads and writes of memory, and flushes, run on the reader with
// their data in the connection's own buffers: they hold nothing the
// in-flight budget bounds, and go on while other clients' requests have
// spent it all. A larger read still waits for it.
func TestInlineRequestsNeedNoBudget(t *testing.T) {
	const spenders = 4 // MaxInflight 1 MiB: four requests of at least 256 KiB spend it
	h := &held{Mem: nbd.NewMem(1 << 20), started: make(chan struct{}, spenders), release: make(chan struct{})}
	srv := &nbd.Server{MaxInflight: 1 << 20, Logger: quietLogger(), Exports: []*nbd.Export{
		{Name: "held", Backend: h}, {Name: "mem", Backend: nbd.NewMem(1 << 20)}}}
	release := sync.OnceFunc(func() { close(h.release) })
	defer release()
	spent := make(chan error, spenders)
	for range spenders {
		c := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "held"})
		go func() { _, err := c.ReadAt(make([]byte, 4096), 0); spent <- err }()
		<-h.started
	}
	c := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "mem"})
	dctx, cancel := context.WithTimeout(ctx(t), 3*time.Second)
	defer cancel()
	data := bytes.Repeat([]byte{0x5a}, 4096)
	for _, r := range []struct {
		req nbd.Request
		buf []byte
	}{
		{nbd.Request{Cmd: nbd.CmdWrite, Offset: 8192, Length: 4096, Data: data}, nil},
		{nbd.Request{Cmd: nbd.CmdFlush}, nil},
		{nbd.Request{Cmd: nbd.CmdRead, Offset: 8192, Length: 4096}, make([]byte, 4096)},
	} {
		if _, err := c.Do(dctx, r.req, r.buf); err != nil {
			t.Fatalf("%v on memory while the budget is spent: %v", r.req.Cmd, err)
		}
		if r.req.Cmd == nbd.CmdRead && !bytes.Equal(r.buf, data) {
			t.Fatal("read back differs")
		}
	}
	// A read of memory from largeWrite on has a buffer of its own while
	// it is sent: it still waits for the budget.
	large := make(chan error, 1)
	go func() { _, err := c.ReadAt(make([]byte, 48<<10), 0); large <- err }()
	select {
	case err := <-large:
		t.Fatalf("a 48 KiB read of memory ran while the budget was spent (%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	release()
	for range spenders {
		if err := <-spent; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-large; err != nil {
		t.Fatal(err)
	}
}
