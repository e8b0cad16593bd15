package nbd_test

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/nbdlab/nbdlab/nbd"
)

// writeLog records the size of every Write on a connection.
type writeLog struct {
	net.Conn
	mu     sync.Mutex
	writes []int
}

func (c *writeLog) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, len(p))
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *writeLog) take() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.writes
	c.writes = nil
	return w
}

// Replies to a pipelined burst are batched, but never more than eight to
// a write: a client that sends its next requests only once replies come
// back (fio's nbd engine) must not wait for the whole burst.
func TestRepliesHeldAtMostEight(t *testing.T) {
	const burst, size = 16, 512
	mem := nbd.NewMem(1 << 20)
	srv := newServer(&nbd.Export{Name: "m", Backend: mem})
	cside, sside := net.Pipe()
	logged := &writeLog{Conn: sside}
	done := make(chan error, 1)
	go func() { done <- srv.ServeConn(ctx(t), logged) }()
	defer func() {
		cside.Close()
		<-done
	}()

	// Fixed newstyle, NBD_OPT_EXPORT_NAME: simple replies.
	greeting := make([]byte, 18)
	if _, err := io.ReadFull(cside, greeting); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	var hs []byte
	hs = binary.BigEndian.AppendUint32(hs, uint32(nbd.FlagCFixedNewstyle|nbd.FlagCNoZeroes))
	hs = binary.BigEndian.AppendUint64(hs, nbd.MagicOpt)
	hs = binary.BigEndian.AppendUint32(hs, uint32(nbd.OptExportName))
	hs = binary.BigEndian.AppendUint32(hs, 1)
	hs = append(hs, 'm')
	if _, err := cside.Write(hs); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if _, err := io.ReadFull(cside, make([]byte, 10)); err != nil {
		t.Fatalf("export size and flags: %v", err)
	}
	logged.take()

	var reqs []byte
	for i := range burst {
		reqs = nbd.AppendRequestHeader(reqs, nbd.Request{Cmd: nbd.CmdRead, Offset: uint64(i * size), Length: size}, uint64(i+1))
	}
	errc := make(chan error, 1)
	go func() { _, err := cside.Write(reqs); errc <- err }()
	const replyLen = 16 + size
	seen := map[uint64]bool{}
	for range burst {
		reply := make([]byte, replyLen)
		if _, err := io.ReadFull(cside, reply); err != nil {
			t.Fatalf("reply %d: %v", len(seen)+1, err)
		}
		if errno := binary.BigEndian.Uint32(reply[4:]); errno != 0 {
			t.Fatalf("reply %d: errno %d", len(seen)+1, errno)
		}
		seen[binary.BigEndian.Uint64(reply[8:])] = true
	}
	if err := <-errc; err != nil {
		t.Fatalf("sending %d requests: %v", burst, err)
	}
	if len(seen) != burst {
		t.Fatalf("%d distinct cookies answered, want %d", len(seen), burst)
	}
	writes := logged.take()
	for _, n := range writes {
		if n > 8*replyLen {
			t.Fatalf("a write carried %d replies (writes of %v bytes), want at most 8", n/replyLen, writes)
		}
	}
	if len(writes) >= burst {
		t.Fatalf("%d writes for %d replies read in one go: not batched", len(writes), burst)
	}
}
