package nbd_test

import (
	"encoding/binary"
	"io"
	"net"
	"slices"
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
// back (fio's nbd engine) must not wait for the whole burst. A large
// reply goes out at once with what was held before it, and the count of
// held replies starts again from there.
func TestRepliesHeldAtMostEight(t *testing.T) {
	const small, large = 512, 32 << 10
	for _, tc := range []struct {
		name   string
		sizes  []uint32 // reads sent in one write, answered in order
		writes int      // writes that carry their replies
	}{
		{"16 small", slices.Repeat([]uint32{small}, 16), 2},
		// 3 small and the large one leave in one vectored write, two
		// writes on a net.Pipe; the next 8 in one more.
		{"large in between", slices.Concat(slices.Repeat([]uint32{small}, 3), []uint32{large}, slices.Repeat([]uint32{small}, 8)), 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(&nbd.Export{Name: "m", Backend: nbd.NewMem(1 << 20)})
			cside, sside := net.Pipe()
			logged := &writeLog{Conn: sside}
			done := make(chan error, 1)
			go func() { done <- srv.ServeConn(ctx(t), logged) }()
			defer func() {
				cside.Close()
				<-done
			}()
			if _, _, err := nbd.Negotiate(ctx(t), cside, &nbd.ClientConfig{Export: "m", NoStructuredReplies: true}); err != nil {
				t.Fatalf("handshake: %v", err)
			}
			logged.take()

			var reqs []byte
			for i, n := range tc.sizes {
				reqs = nbd.AppendRequestHeader(reqs, nbd.Request{Cmd: nbd.CmdRead, Offset: uint64(i) * large, Length: n}, uint64(i))
			}
			errc := make(chan error, 1)
			go func() { _, err := cside.Write(reqs); errc <- err }()
			for i := range tc.sizes {
				var hdr [16]byte
				if _, err := io.ReadFull(cside, hdr[:]); err != nil {
					t.Fatalf("reply %d: %v", i+1, err)
				}
				cookie := binary.BigEndian.Uint64(hdr[8:])
				if errno := binary.BigEndian.Uint32(hdr[4:]); errno != 0 || cookie >= uint64(len(tc.sizes)) {
					t.Fatalf("reply %d: errno %d, cookie %d", i+1, errno, cookie)
				}
				if _, err := io.ReadFull(cside, make([]byte, tc.sizes[cookie])); err != nil {
					t.Fatalf("reply %d's data: %v", i+1, err)
				}
			}
			if err := <-errc; err != nil {
				t.Fatalf("sending %d requests: %v", len(tc.sizes), err)
			}
			if writes := logged.take(); len(writes) != tc.writes {
				t.Fatalf("%d replies in %d writes (of %v bytes), want %d writes", len(tc.sizes), len(writes), writes, tc.writes)
			}
		})
	}
}
