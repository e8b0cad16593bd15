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

func ctx(t testing.TB) context.Context {
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
