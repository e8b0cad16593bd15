package protocol_test

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
	"sync"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/conform/protocol"
	"github.com/nbdlab/nbdlab/conform/report"
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
	r, err := protocol.CheckServers(context.Background(), []protocol.Server{{Name: "nbdlab", URI: serve(t, srv)}},
		protocol.Options{Patience: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	r.WriteMatrix(&out)
	t.Log(out.String())
	for _, res := range r.Targets[0].Results {
		if res.Status != report.Pass {
			t.Errorf("%s: %s %s", res.ID, res.Status, res.Detail)
		}
	}
	if len(r.Targets[0].Results) != len(protocol.Checks()) {
		t.Fatalf("%d results for %d checks", len(r.Targets[0].Results), len(protocol.Checks()))
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
	r, err := protocol.CheckServers(context.Background(), []protocol.Server{{Name: "careless", URI: careless(t)}},
		protocol.Options{Patience: 2 * time.Second, Run: func(id string) bool { return strings.HasPrefix(id, "handshake/") }})
	if err != nil {
		t.Fatal(err)
	}
	status := map[string]report.Status{}
	for _, res := range r.Targets[0].Results {
		status[res.ID] = res.Status
	}
	for id, want := range map[string]report.Status{
		"handshake/unknown-option": report.Fail, "handshake/info-export": report.Fail, // MUSTs
		"handshake/list-with-data": report.Warn, // a SHOULD
	} {
		if status[id] != want {
			t.Errorf("%s: %s, want %s", id, status[id], want)
		}
	}
	if status["handshake/greeting"] != report.Pass {
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

// sloppy is a server that negotiates properly (NBD_OPT_GO, simple
// replies), keeps 1 MiB in memory, and answers every request wherever it
// points: reads past the end get zeroes, writes there are acknowledged
// and dropped.
func sloppy(t *testing.T) string {
	const size = 1 << 20
	sock := filepath.Join(t.TempDir(), "sloppy")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	be := binary.BigEndian
	optReply := func(w io.Writer, opt uint32, typ nbd.ReplyType, data []byte) {
		r := be.AppendUint64(nil, nbd.MagicOptReply)
		r = be.AppendUint32(r, opt)
		r = be.AppendUint32(r, uint32(typ))
		r = be.AppendUint32(r, uint32(len(data)))
		w.Write(append(r, data...))
	}
	serveConn := func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var mu sync.Mutex
		disk := make([]byte, size)
		b := be.AppendUint64(nil, nbd.MagicInit)
		b = be.AppendUint64(b, nbd.MagicOpt)
		c.Write(be.AppendUint16(b, uint16(nbd.FlagFixedNewstyle)))
		br := bufio.NewReader(c)
		io.ReadFull(br, make([]byte, 4))
		for { // options until NBD_OPT_GO
			var h [16]byte
			if _, err := io.ReadFull(br, h[:]); err != nil {
				return
			}
			opt := be.Uint32(h[8:])
			io.CopyN(io.Discard, br, int64(be.Uint32(h[12:])))
			if nbd.Option(opt) == nbd.OptAbort {
				optReply(c, opt, nbd.RepAck, nil)
				return
			}
			if nbd.Option(opt) != nbd.OptGo && nbd.Option(opt) != nbd.OptInfo {
				optReply(c, opt, nbd.RepErrUnsup, nil)
				continue
			}
			info := be.AppendUint16(nil, uint16(nbd.InfoExport))
			info = be.AppendUint64(info, size)
			info = be.AppendUint16(info, uint16(nbd.FlagHasFlags|nbd.FlagSendFlush))
			optReply(c, opt, nbd.RepInfo, info)
			optReply(c, opt, nbd.RepAck, nil)
			if nbd.Option(opt) == nbd.OptGo {
				break
			}
		}
		for {
			var h [28]byte
			if _, err := io.ReadFull(br, h[:]); err != nil {
				return
			}
			cmd, cookie := nbd.Cmd(be.Uint16(h[6:])), h[8:16]
			off, n := be.Uint64(h[16:]), be.Uint32(h[24:])
			reply := be.AppendUint32(nil, nbd.MagicSimpleReply)
			reply = append(be.AppendUint32(reply, 0), cookie...)
			mu.Lock()
			switch cmd {
			case nbd.CmdDisc:
				mu.Unlock()
				return
			case nbd.CmdRead:
				data := make([]byte, n)
				if off < size {
					copy(data, disk[off:])
				}
				reply = append(reply, data...)
			case nbd.CmdWrite:
				data := make([]byte, n)
				io.ReadFull(br, data)
				if off < size {
					copy(disk[off:], data)
				}
			}
			mu.Unlock()
			c.Write(reply)
		}
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serveConn(c)
		}
	}()
	return "nbd+unix:///d?socket=" + sock
}

// The checker finds a server that answers past the end: what the
// specification has it refuse, it serves, and only the checks about the
// end say so.
func TestSloppyServerFails(t *testing.T) {
	ids := map[string]report.Status{
		"transmission/read":            report.Pass,
		"transmission/read-past-end":   report.Warn, // a SHOULD
		"transmission/write-past-end":  report.Warn, // a SHOULD
		"transmission/offset-overflow": report.Fail, // a MUST
	}
	r, err := protocol.CheckServers(context.Background(), []protocol.Server{{Name: "sloppy", URI: sloppy(t)}},
		protocol.Options{Patience: 2 * time.Second, Run: func(id string) bool { _, ok := ids[id]; return ok }})
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, res := range r.Targets[0].Results {
		want, ok := ids[res.ID]
		if !ok {
			continue
		}
		seen++
		if res.Status != want {
			t.Errorf("%s: %s (%s), want %s", res.ID, res.Status, res.Detail, want)
		}
		t.Logf("%s: %s %s", res.ID, res.Status, res.Detail)
	}
	if seen != len(ids) {
		t.Errorf("%d of the %d checks ran", seen, len(ids))
	}
}
