package harness_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/internal/procfs"
	"github.com/nbdlab/nbdlab/nbd"
)

// pipeliner negotiates on addr and sends reads of n bytes until ctx ends,
// reading none of the replies.
func pipeliner(ctx context.Context, addr nbd.Addr, n uint32) error {
	c, err := addr.DialConn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	info, conn, err := nbd.Negotiate(ctx, c, &nbd.ClientConfig{NoStructuredReplies: true})
	if err != nil {
		return err
	}
	var batch []byte
	for i := range 64 {
		off := uint64(i) * uint64(n) % uint64(info.Size-int64(n))
		batch = nbd.AppendRequestHeader(batch, nbd.Request{Cmd: nbd.CmdRead, Offset: off, Length: n}, uint64(i))
	}
	dl, _ := ctx.Deadline()
	conn.SetWriteDeadline(dl)
	for ctx.Err() == nil {
		if _, err := conn.Write(batch); err != nil {
			return nil // the server stopped reading us: what it should do
		}
	}
	return nil
}

// Forty clients that pipeline reads and never read a reply hold the
// server to a bounded amount of memory, and it goes on serving others:
// reads of memory under 32 KiB, made into each connection's reply buffer
// and taking no part in the in-flight budget, as well as larger ones.
func TestServeBoundsClientsThatDoNotRead(t *testing.T) {
	for _, size := range []uint32{4 << 10, 16 << 10, 32 << 10, 32 << 20} {
		t.Run(fmt.Sprintf("%dKiB reads", size>>10), func(t *testing.T) {
			s := serveBoth(t, "d=mem:1G")
			addr := s.Addrs[1]
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var wg sync.WaitGroup
			for range 40 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := pipeliner(ctx, addr, size); err != nil {
						t.Error(err)
					}
				}()
			}
			time.Sleep(2 * time.Second)
			c, err := nbd.Dial(context.Background(), addr.String(), nil)
			if err != nil {
				t.Fatalf("a new client while forty do not read: %v", err)
			}
			if _, err := c.ReadAt(make([]byte, 4096), 0); err != nil {
				t.Fatalf("a read of a new client while forty do not read: %v", err)
			}
			c.Close()
			wg.Wait()
			rss, err := procfs.PeakRSS(s.Cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("peak RSS of nbdlab serve: %d MiB", rss>>20)
			if rss > 400<<20 {
				t.Fatalf("peak RSS %d MiB with forty clients reading no replies; want under 400 MiB", rss>>20)
			}
		})
	}
}
