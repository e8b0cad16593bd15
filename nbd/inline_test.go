package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/nbdlab/nbdlab/imagelock"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
)

// Writes to memory run where they are read, their data taken from the
// read buffer. A burst of them sent at once, of sizes on either side of
// the largest run that way (64 KiB) and together many times the read
// buffer, each with its own bytes, all land where they were sent, and
// reads answered from the reply buffer return them.
func TestInlineWritesBurst(t *testing.T) {
	shm, err := os.MkdirTemp("/dev/shm", "nbdlab-inline-")
	if err != nil {
		t.Fatal("no /dev/shm:", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	const size = 16 << 20
	path := filepath.Join(shm, "img")
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	file, err := nbd.OpenFile(path, imagelock.Writer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { file.Close() })
	sizes := []int{1, 4096, 512, 64 << 10, 64<<10 + 1, 60000, 100000, 4096, 32<<10 - 1, 32 << 10, 7, 65535}
	for _, tc := range []struct {
		name    string
		backend nbd.Backend
	}{{"mem", nbd.NewMem(size)}, {"tmpfs file", file}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(&nbd.Export{Backend: tc.backend})
			a, b := nbdtest.SocketPair(t)
			go srv.ServeConn(context.Background(), a)
			_, conn, err := nbd.Negotiate(ctx(t), b, &nbd.ClientConfig{NoStructuredReplies: true})
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, size)
			var burst []byte
			var n int
			// Each round writes a region of its own: writes larger than
			// 64 KiB run on other workers, so overlapping ones could land
			// in any order.
			for round := range 6 {
				off := round*(512<<10) + round*513
				for i, sz := range sizes {
					fill := byte(round*len(sizes) + i + 1)
					var flags nbd.CmdFlags
					if i%3 == 0 {
						flags = nbd.CmdFlagFUA
					}
					burst = nbd.AppendRequestHeader(burst, nbd.Request{Cmd: nbd.CmdWrite, Flags: flags, Offset: uint64(off), Length: uint32(sz)}, uint64(n))
					burst = append(burst, bytes.Repeat([]byte{fill}, sz)...)
					copy(want[off:off+sz], bytes.Repeat([]byte{fill}, sz))
					off += sz
					n++
				}
			}
			go conn.Write(burst)
			// Replies come in any order: those larger than 64 KiB run
			// on other workers.
			reply := make([]byte, 16)
			answered := map[uint64]bool{}
			for i := range n {
				if _, err := io.ReadFull(conn, reply); err != nil {
					t.Fatalf("reply %d of %d: %v", i, n, err)
				}
				errno, cookie := binary.BigEndian.Uint32(reply[4:]), binary.BigEndian.Uint64(reply[8:])
				if errno != 0 || cookie >= uint64(n) || answered[cookie] {
					t.Fatalf("reply %d: errno %d for cookie %d (answered before: %v)", i, errno, cookie, answered[cookie])
				}
				answered[cookie] = true
			}
			// Read it all back through the server, in reads small enough
			// to be answered inline and large ones, several in flight.
			var reads []byte
			type span struct{ off, n int }
			var spans []span
			for off := 0; off < 3<<20; {
				sz := min(sizes[len(spans)%len(sizes)], 3<<20-off)
				reads = nbd.AppendRequestHeader(reads, nbd.Request{Cmd: nbd.CmdRead, Offset: uint64(off), Length: uint32(sz)}, uint64(len(spans)))
				spans = append(spans, span{off, sz})
				off += sz
			}
			go conn.Write(reads)
			clear(answered)
			for i := range spans {
				if _, err := io.ReadFull(conn, reply); err != nil {
					t.Fatalf("read reply %d: %v", i, err)
				}
				errno, cookie := binary.BigEndian.Uint32(reply[4:]), binary.BigEndian.Uint64(reply[8:])
				if errno != 0 || cookie >= uint64(len(spans)) || answered[cookie] {
					t.Fatalf("read reply %d: errno %d for cookie %d (answered before: %v)", i, errno, cookie, answered[cookie])
				}
				answered[cookie] = true
				s := spans[cookie]
				got := make([]byte, s.n)
				if _, err := io.ReadFull(conn, got); err != nil {
					t.Fatalf("read %d's data: %v", i, err)
				}
				if !bytes.Equal(got, want[s.off:s.off+s.n]) {
					t.Fatalf("read %d, of %d bytes at %d, returned other bytes than were written there", cookie, s.n, s.off)
				}
			}
		})
	}
}
