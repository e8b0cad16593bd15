package conform_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/conform"
	"github.com/nbdlab/nbdlab/nbd"
)

func serve(t *testing.T, srv *nbd.Server) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s")
	l, err := nbd.Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return "nbd+unix:///d?socket=" + sock
}

// nbdlab's own server passes every check.
func TestNbdlabPassesEverything(t *testing.T) {
	srv := &nbd.Server{Exports: []*nbd.Export{{Name: "d", Backend: nbd.NewMem(64 << 20)}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), HandshakeTimeout: time.Second}
	r, err := conform.CheckServers(context.Background(), []conform.Server{{Name: "nbdlab", URI: serve(t, srv)}},
		conform.Options{Patience: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	r.WriteMatrix(&out)
	t.Log(out.String())
	for _, res := range r.Targets[0].Results {
		if res.Status != conform.Pass {
			t.Errorf("%s: %s %s", res.ID, res.Status, res.Detail)
		}
	}
	if len(r.Targets[0].Results) != len(conform.Checks()) {
		t.Fatalf("%d results for %d checks", len(r.Targets[0].Results), len(conform.Checks()))
	}
}

// careless is a server that greets properly and then acknowledges every
// option, whatever it is, and never answers a request.
func careless(t *testing.T) string {
	sock := filepath.Join(t.TempDir(), "careless")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				b := binary.BigEndian.AppendUint64(nil, nbd.MagicInit)
				b = binary.BigEndian.AppendUint64(b, nbd.MagicOpt)
				c.Write(binary.BigEndian.AppendUint16(b, uint16(nbd.FlagFixedNewstyle)))
				br := bufio.NewReader(c)
				io.ReadFull(br, make([]byte, 4))
				for {
					var h [16]byte
					if _, err := io.ReadFull(br, h[:]); err != nil {
						return
					}
					io.CopyN(io.Discard, br, int64(binary.BigEndian.Uint32(h[12:])))
					r := binary.BigEndian.AppendUint64(nil, nbd.MagicOptReply)
					r = append(r, h[8:12]...)
					r = binary.BigEndian.AppendUint32(r, uint32(nbd.RepAck))
					c.Write(binary.BigEndian.AppendUint32(r, 0))
				}
			}()
		}
	}()
	return "nbd+unix:///d?socket=" + sock
}

// The checker finds what a careless server gets wrong, and says so in
// every report format.
func TestCarelessServerFails(t *testing.T) {
	r, err := conform.CheckServers(context.Background(), []conform.Server{{Name: "careless", URI: careless(t)}},
		conform.Options{Patience: 2 * time.Second, Run: func(id string) bool { return strings.HasPrefix(id, "handshake/") }})
	if err != nil {
		t.Fatal(err)
	}
	status := map[string]conform.Status{}
	for _, res := range r.Targets[0].Results {
		status[res.ID] = res.Status
	}
	for id, want := range map[string]conform.Status{
		"handshake/unknown-option": conform.Fail, "handshake/info-export": conform.Fail, // MUSTs
		"handshake/list-with-data": conform.Warn, // a SHOULD
	} {
		if status[id] != want {
			t.Errorf("%s: %s, want %s", id, status[id], want)
		}
	}
	if status["handshake/greeting"] != conform.Pass {
		t.Errorf("greeting: %s, want pass", status["handshake/greeting"])
	}
	if r.MustFailures() == 0 {
		t.Fatal("no MUST violations counted")
	}
	for name, write := range map[string]func(io.Writer) error{
		"matrix": r.WriteMatrix, "json": r.WriteJSON, "markdown": r.WriteMarkdown, "junit": r.WriteJUnit,
	} {
		var b bytes.Buffer
		if err := write(&b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.Contains(b.String(), "handshake/unknown-option") || !strings.Contains(strings.ToLower(b.String()), "fail") {
			t.Errorf("%s report does not show the failure:\n%s", name, b.String())
		}
	}
}
