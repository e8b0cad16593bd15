package nbd_test

import (
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/nbd"
)

type syncs struct {
	*nbd.Mem
	n atomic.Int32
}

func (s *syncs) Sync() error { s.n.Add(1); return nil }

// SetExports while serving: a new client finds only the new set, a
// connection that chose a removed export goes on with it, and Shutdown
// flushes the removed one too.
func TestSetExports(t *testing.T) {
	a, b := &syncs{Mem: nbd.NewMem(1 << 20)}, &syncs{Mem: nbd.NewMem(2 << 20)}
	srv := newServer(&nbd.Export{Name: "a", Backend: a})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	addr := "unix:" + l.Addr().String()
	old, err := nbd.Dial(ctx(t), addr, &nbd.ClientConfig{Export: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	srv.SetExports([]*nbd.Export{{Name: "b", Backend: b}})
	if c, err := nbd.Dial(ctx(t), addr, &nbd.ClientConfig{Export: "a"}); err == nil {
		c.Close()
		t.Fatal("a new client reached the removed export")
	}
	for _, name := range []string{"b", ""} { // the first export answers the empty name
		c, err := nbd.Dial(ctx(t), addr, &nbd.ClientConfig{Export: name})
		if err != nil {
			t.Fatalf("export %q after SetExports: %v", name, err)
		}
		if c.Info.Size != 2<<20 {
			t.Errorf("export %q is %d bytes, want b's", name, c.Info.Size)
		}
		c.Close()
	}
	if _, err := old.WriteAt([]byte("still here"), 0); err != nil {
		t.Fatalf("the connection to the removed export: %v", err)
	}
	if err := srv.Shutdown(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if a.n.Load() == 0 || b.n.Load() == 0 {
		t.Errorf("Shutdown flushed a %d and b %d times; want both", a.n.Load(), b.n.Load())
	}
}

// An export SetExports takes out is flushed and handed to Retired once no
// connection uses it: at once when none does, else when the last of its
// connections ends; never while one still does.
func TestSetExportsRetired(t *testing.T) {
	busy, idle := &syncs{Mem: nbd.NewMem(1 << 20)}, &syncs{Mem: nbd.NewMem(1 << 20)}
	srv := newServer(&nbd.Export{Name: "busy", Backend: busy}, &nbd.Export{Name: "idle", Backend: idle})
	retired := make(chan string, 4)
	srv.Retired = func(e *nbd.Export) { retired <- e.Name }
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	addr := "unix:" + l.Addr().String()
	var conns []*nbd.Client
	for range 2 {
		c, err := nbd.Dial(ctx(t), addr, &nbd.ClientConfig{Export: "busy"})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	srv.SetExports([]*nbd.Export{{Name: "new", Backend: nbd.NewMem(1 << 20)}})
	if got := <-retired; got != "idle" || idle.n.Load() == 0 {
		t.Errorf("retired %q first (idle flushed %d times); want the unused export, flushed", got, idle.n.Load())
	}
	for i, c := range conns {
		if _, err := c.WriteAt([]byte("x"), 0); err != nil {
			t.Fatalf("connection %d to the removed export: %v", i, err)
		}
		select {
		case got := <-retired:
			t.Fatalf("%q retired while connection %d still used it", got, i)
		default:
		}
		c.Close()
	}
	select {
	case got := <-retired:
		if got != "busy" || busy.n.Load() == 0 {
			t.Errorf("retired %q (busy flushed %d times); want busy, flushed", got, busy.n.Load())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the export was not retired after its last connection closed")
	}
}
