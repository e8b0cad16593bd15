package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
)

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newServer(exports ...*nbd.Export) *nbd.Server {
	return &nbd.Server{Exports: exports, Logger: quietLogger()}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestRoundTripAndBlockStatus(t *testing.T) {
	srv := newServer(&nbd.Export{Name: "disk", Backend: nbd.NewMem(8 << 20)})
	c := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "disk"})
	if !c.Info.Structured || !c.Info.BaseAlloc {
		t.Fatalf("negotiated %+v, want structured replies and base:allocation", c.Info)
	}
	data := bytes.Repeat([]byte("nbdlab!\n"), 64<<10/8)
	if _, err := c.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := c.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back different data")
	}
	ext, err := c.BlockStatus(ctx(t), 0, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := []nbd.Extent{
		{Length: 1 << 20, Flags: nbd.StateHole | nbd.StateZero},
		{Length: 64 << 10, Flags: 0},
		{Length: 3<<20 - 64<<10, Flags: nbd.StateHole | nbd.StateZero},
	}
	if !equalExtents(ext, want) {
		t.Fatalf("block status = %+v, want %+v", ext, want)
	}
	if err := c.Trim(ctx(t), 1<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatalf("after trim: err %v, zero %v", err, bytes.Equal(got, make([]byte, len(got))))
	}
}

func equalExtents(a, b []nbd.Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestErrorRules pins the errno the server sends for each kind of bad
// request, as the protocol specification prescribes.
func TestErrorRules(t *testing.T) {
	const size = 1 << 20
	srv := newServer(
		&nbd.Export{Name: "rw", Backend: nbd.NewMem(size)},
		&nbd.Export{Name: "ro", Backend: nbd.NewMem(size), ReadOnly: true},
	)
	rw := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "rw"})
	ro := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "ro"})
	simple := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "rw", NoStructuredReplies: true})
	buf := make([]byte, 8192)
	tests := []struct {
		name   string
		c      *nbd.Client
		req    nbd.Request
		want   nbd.Errno
		buflen int
	}{
		{"read past end", rw, nbd.Request{Cmd: nbd.CmdRead, Offset: size - 4096, Length: 8192}, nbd.EINVAL, 8192},
		{"read offset past end", rw, nbd.Request{Cmd: nbd.CmdRead, Offset: size + 1, Length: 1}, nbd.EINVAL, 1},
		{"read offset overflow", rw, nbd.Request{Cmd: nbd.CmdRead, Offset: 1<<64 - 1, Length: 2}, nbd.EINVAL, 2},
		{"trim past end", rw, nbd.Request{Cmd: nbd.CmdTrim, Offset: size, Length: 1}, nbd.EINVAL, 0},
		{"block status past end", rw, nbd.Request{Cmd: nbd.CmdBlockStatus, Offset: size - 1, Length: 2}, nbd.EINVAL, 0},
		{"block status of nothing", rw, nbd.Request{Cmd: nbd.CmdBlockStatus, Offset: 0, Length: 0}, nbd.EINVAL, 0},
		{"block status without context", simple, nbd.Request{Cmd: nbd.CmdBlockStatus, Length: 4096}, nbd.EINVAL, 0},
		{"write past end", rw, nbd.Request{Cmd: nbd.CmdWrite, Offset: size - 1, Length: 2, Data: []byte{1, 2}}, nbd.ENOSPC, 0},
		{"write zeroes past end", rw, nbd.Request{Cmd: nbd.CmdWriteZeroes, Offset: size, Length: 4096}, nbd.ENOSPC, 0},
		{"write to read-only", ro, nbd.Request{Cmd: nbd.CmdWrite, Length: 2, Data: []byte{1, 2}}, nbd.EPERM, 0},
		{"trim on read-only", ro, nbd.Request{Cmd: nbd.CmdTrim, Length: 4096}, nbd.EPERM, 0},
		{"write zeroes on read-only", ro, nbd.Request{Cmd: nbd.CmdWriteZeroes, Length: 4096}, nbd.EPERM, 0},
		{"unknown command", rw, nbd.Request{Cmd: 42}, nbd.EINVAL, 0},
		{"resize unsupported", rw, nbd.Request{Cmd: nbd.CmdResize}, nbd.EINVAL, 0},
		{"unknown flag", rw, nbd.Request{Cmd: nbd.CmdRead, Flags: 1 << 12, Length: 1}, nbd.EINVAL, 1},
		{"flag of another command", rw, nbd.Request{Cmd: nbd.CmdRead, Flags: nbd.CmdFlagReqOne, Length: 1}, nbd.EINVAL, 1},
		{"DF without structured replies", simple, nbd.Request{Cmd: nbd.CmdRead, Flags: nbd.CmdFlagDF, Length: 1}, nbd.EINVAL, 1},
		{"read above maximum", rw, nbd.Request{Cmd: nbd.CmdRead, Length: nbd.MaxPayload + 1}, nbd.EINVAL, 0},
		{"fast zero on read-only", ro, nbd.Request{Cmd: nbd.CmdWriteZeroes, Flags: nbd.CmdFlagFastZero, Length: 1}, nbd.EPERM, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.c.Do(ctx(t), tt.req, buf[:tt.buflen])
			var re *nbd.RequestError
			if !errors.As(err, &re) {
				t.Fatalf("got %v, want an nbd.RequestError", err)
			}
			if re.Errno != tt.want || !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", re.Errno, tt.want)
			}
		})
	}
	// The session survives all of that.
	if _, err := rw.WriteAt([]byte("still here"), 0); err != nil {
		t.Fatalf("session broken by bad requests: %v", err)
	}
}

// Requests up to the maximum payload are served, 48 MiB ones included
// (the reference implementation's test client sends them); a larger write
// is refused at once, before its payload, and the session goes on once
// the payload has been dropped.
func TestPayloadLimits(t *testing.T) {
	srv := newServer(&nbd.Export{Name: "", Backend: nbd.NewMem(128 << 20)})
	c := nbdtest.Pair(t, srv, nil)
	if c.Info.MaxBlock != nbd.DefaultMaxPayload {
		t.Fatalf("maximum block size advertised %d, want %d", c.Info.MaxBlock, nbd.DefaultMaxPayload)
	}
	big := bytes.Repeat([]byte("48MiB..."), 48<<20/8)
	if _, err := c.Do(ctx(t), nbd.Request{Cmd: nbd.CmdWrite, Offset: 4096, Length: uint32(len(big)), Data: big}, nil); err != nil {
		t.Fatalf("48 MiB write: %v", err)
	}
	got := make([]byte, len(big))
	if _, err := c.Do(ctx(t), nbd.Request{Cmd: nbd.CmdRead, Offset: 4096, Length: uint32(len(got))}, got); err != nil {
		t.Fatalf("48 MiB read: %v", err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("48 MiB read back differs")
	}
	over := uint32(nbd.DefaultMaxPayload + 4096)
	if _, err := c.Do(ctx(t), nbd.Request{Cmd: nbd.CmdRead, Length: over}, make([]byte, over)); !errors.Is(err, nbd.EINVAL) {
		t.Fatalf("read over the maximum: %v, want EINVAL", err)
	}
	if _, err := c.Do(ctx(t), nbd.Request{Cmd: nbd.CmdWrite, Length: over, Data: make([]byte, over)}, nil); !errors.Is(err, nbd.EINVAL) {
		t.Fatalf("write over the maximum: %v, want EINVAL", err)
	}
	if _, err := c.WriteAt([]byte{1}, 0); err != nil {
		t.Fatalf("the session after an oversized write: %v", err)
	}
}

func TestHandshakeOptions(t *testing.T) {
	srv := newServer(&nbd.Export{Name: "a", Backend: nbd.NewMem(4096)})
	c, s := net.Pipe()
	go srv.ServeConn(context.Background(), s)
	defer c.Close()
	_, err := nbd.NewClient(ctx(t), c, &nbd.ClientConfig{Export: "nope"})
	var oe *nbd.OptionError
	if !errors.As(err, &oe) || oe.Reply != nbd.RepErrUnknown {
		t.Fatalf("GO for unknown export: got %v, want NBD_REP_ERR_UNKNOWN", err)
	}
	// The default export is the first.
	cl := nbdtest.Pair(t, srv, nil)
	if cl.Info.Size != 4096 || cl.Info.Name != "a" {
		t.Fatalf("default export = %+v, want a, 4096 bytes", cl.Info)
	}
	if cl.Info.Flags&nbd.FlagCanMultiConn == 0 || cl.Info.MaxBlock != nbd.DefaultMaxPayload {
		t.Fatalf("flags %v, max block %d", cl.Info.Flags, cl.Info.MaxBlock)
	}
}

func TestTLSRequired(t *testing.T) {
	creds := nbdtest.NewTLS(t)
	srv := newServer(&nbd.Export{Name: "s", Backend: nbd.NewMem(4096)})
	srv.TLSConfig = creds.ServerConfig(t)
	c, s := net.Pipe()
	go srv.ServeConn(context.Background(), s)
	_, err := nbd.NewClient(ctx(t), c, &nbd.ClientConfig{Export: "s"})
	c.Close()
	var oe *nbd.OptionError
	if !errors.As(err, &oe) || oe.Reply != nbd.RepErrTLSReqd {
		t.Fatalf("plain client: got %v, want NBD_REP_ERR_TLS_REQD", err)
	}
	cl := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: "s", TLSConfig: creds.ClientConfig(t)})
	if _, err := cl.WriteAt([]byte("secret"), 0); err != nil {
		t.Fatal(err)
	}
}

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
	f, err := nbd.OpenFile(path, false)
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

func TestListenRefusesLiveSocketAndReplacesStaleOne(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sock")
	l, err := nbd.Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nbd.Listen("unix:" + path); err == nil {
		t.Fatal("second listener on a live socket succeeded")
	}
	// Leave a stale socket file behind.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	l2, err := nbd.Listen("unix:" + path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, []byte("keep me"), 0o600)
	if _, err := nbd.Listen("unix:" + regular); err == nil {
		t.Fatal("listening replaced a regular file")
	}
	if b, _ := os.ReadFile(regular); string(b) != "keep me" {
		t.Fatal("regular file was changed")
	}
}

// What clients such as libnbd and qemu do, and the specification allows:
// base:allocation asked for the default export by the empty name, a read
// of nothing, and FUA on commands that do not write.
func TestClientsCorners(t *testing.T) {
	srv := newServer(&nbd.Export{Name: "first", Backend: nbd.NewMem(1 << 20)})
	c := nbdtest.Pair(t, srv, &nbd.ClientConfig{Export: ""})
	if !c.Info.BaseAlloc {
		t.Fatal("base:allocation for the empty export name was not negotiated")
	}
	if _, err := c.BlockStatus(ctx(t), 0, 4096); err != nil {
		t.Fatalf("block status on the default export: %v", err)
	}
	for _, cfg := range []*nbd.ClientConfig{nil, {NoStructuredReplies: true}} {
		c := nbdtest.Pair(t, srv, cfg)
		if _, err := c.Do(ctx(t), nbd.Request{Cmd: nbd.CmdRead, Offset: 4096}, nil); err != nil {
			t.Fatalf("zero-length read (structured %v): %v", c.Info.Structured, err)
		}
		for _, r := range []nbd.Request{
			{Cmd: nbd.CmdRead, Length: 512},
			{Cmd: nbd.CmdFlush},
			{Cmd: nbd.CmdCache, Length: 4096},
			{Cmd: nbd.CmdBlockStatus, Length: 4096},
		} {
			if r.Cmd == nbd.CmdBlockStatus && !c.Info.BaseAlloc {
				continue
			}
			r.Flags = nbd.CmdFlagFUA
			if _, err := c.Do(ctx(t), r, make([]byte, r.Length)); err != nil {
				t.Errorf("%v with FUA: %v", r.Cmd, err)
			}
		}
		if _, err := c.ReadAt(make([]byte, 1), 0); err != nil {
			t.Fatalf("the connection after those: %v", err)
		}
	}
}
