package protocol_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/conform/protocol"
	"github.com/nbdlab/nbdlab/conform/report"
	"github.com/nbdlab/nbdlab/nbd"
)

// Nothing listening: one finding, "cannot connect", and no check run, so
// no MUST is blamed on a server that is not there.
func TestCannotConnect(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nobody")
	r, err := protocol.CheckServers(context.Background(), []protocol.Server{{Name: "x", URI: "nbd+unix:///d?socket=" + sock}},
		protocol.Options{Patience: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tg := r.Targets[0]
	if !strings.HasPrefix(tg.Error, "cannot connect: ") {
		t.Errorf("target error %q, want cannot connect", tg.Error)
	}
	for _, res := range tg.Results {
		if res.Status != report.Error {
			t.Errorf("%s: %s, want error (not run)", res.ID, res.Status)
		}
	}
	if r.MustFailures() != 0 || len(tg.Results) != len(protocol.Checks()) {
		t.Errorf("%d MUST failures and %d results", r.MustFailures(), len(tg.Results))
	}
}

// dying serves like nbdlab until its n-th connection, then dies: it stops
// listening and drops every connection, as a crashed server does.
type dying struct {
	net.Listener
	mu  sync.Mutex
	n   int
	srv *nbd.Server
}

func (d *dying) Accept() (net.Conn, error) {
	c, err := d.Listener.Accept()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.n--
	if d.n == 0 {
		d.Listener.Close()
		go d.srv.Close()
	}
	return c, nil
}

// A server that dies in the middle of the run is reported as dead during
// the check that was running, once; the checks after it are not run
// (and not blamed on it), those before it keep their results.
func TestServerDiesMidRun(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	l, err := nbd.Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &nbd.Server{Exports: []*nbd.Export{{Name: "d", Backend: nbd.NewMem(64 << 20)}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), HandshakeTimeout: time.Second}
	d := &dying{Listener: l, n: 12, srv: srv}
	go srv.Serve(d)
	t.Cleanup(func() { srv.Close() })
	r, err := protocol.CheckServers(context.Background(), []protocol.Server{{Name: "dies", URI: "nbd+unix:///d?socket=" + sock}},
		protocol.Options{Patience: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tg := r.Targets[0]
	if !strings.HasPrefix(tg.Error, "server died during ") {
		t.Fatalf("target error %q, want the server reported dead", tg.Error)
	}
	died := strings.Fields(strings.TrimPrefix(tg.Error, "server died during "))[0]
	seen, passedBefore := false, 0
	for _, res := range tg.Results {
		switch {
		case res.ID+":" == died || res.ID == died:
			seen = true
			if !strings.Contains(res.Detail, "(the server died)") {
				t.Errorf("%s, where it died: %q", res.ID, res.Detail)
			}
		case seen && res.Status != report.Error:
			t.Errorf("%s after the death: %s, want error (not run)", res.ID, res.Status)
		case !seen && res.Status == report.Pass:
			passedBefore++
		}
	}
	if !seen || passedBefore == 0 {
		t.Errorf("died during %q (seen %v), %d checks passed before", died, seen, passedBefore)
	}
	if r.MustFailures() > 1 {
		t.Errorf("%d MUST failures: the death is one finding", r.MustFailures())
	}
}
