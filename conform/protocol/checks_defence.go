package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/nbdlab/nbdlab/conform/report"
	"github.com/nbdlab/nbdlab/nbd"
)

// defenceChecks are the checks of what a server does with clients that stall, do not read, or sit idle.
func defenceChecks() []check {
	return []check{
		{"defence/stalled-handshake", report.Should, "a client silent half way through the handshake is dropped (within the patience, 30s by default)", func(ctx context.Context, p *probe) (report.Status, string) {
			c, err := p.dial(ctx)
			if err != nil {
				return report.Fail, err.Error()
			}
			defer c.Close()
			c.Write([]byte{0, 0, 0, 3}) // client flags, then nothing
			c.SetReadDeadline(time.Now().Add(p.patience))
			start := time.Now()
			_, err = io.Copy(io.Discard, c)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return report.Fail, fmt.Sprintf("still held after %s", p.patience)
			}
			return report.Pass, fmt.Sprintf("dropped after %s", time.Since(start).Round(100*time.Millisecond))
		}},
		{"defence/clients-that-do-not-read", report.Should, "while 8 clients pipeline 1 MiB reads and read no reply, a new client is served", func(ctx context.Context, p *probe) (report.Status, string) {
			return underLoad(ctx, p, 8, func(ctx context.Context, conn net.Conn, info nbd.ExportInfo) {
				var b []byte
				n := uint32(min(info.Size, 1<<20))
				for i := range 64 {
					b = nbd.AppendRequestHeader(b, nbd.Request{Cmd: nbd.CmdRead, Length: n}, uint64(i))
				}
				for ctx.Err() == nil {
					if _, err := conn.Write(b); err != nil {
						return
					}
				}
			})
		}},
		{"defence/idle-clients", report.Should, "while 200 clients sit idle after the handshake, a new client is served", func(ctx context.Context, p *probe) (report.Status, string) {
			return underLoad(ctx, p, 200, func(ctx context.Context, conn net.Conn, info nbd.ExportInfo) { <-ctx.Done() })
		}},
	}
}
