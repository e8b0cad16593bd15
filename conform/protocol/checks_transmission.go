package protocol

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/nbdlab/nbdlab/conform/report"
	"github.com/nbdlab/nbdlab/nbd"
)

// transmissionChecks are the checks of requests on a chosen export.
func transmissionChecks() []check {
	return []check{
		{"transmission/read", report.Must, "reads return the bytes written, with simple and structured replies", func(ctx context.Context, p *probe) (report.Status, string) {
			for _, simple := range []bool{true, false} {
				c, err := p.client(ctx, simple)
				if err != nil {
					return report.Fail, err.Error()
				}
				defer c.Close()
				want := bytes.Repeat([]byte("nbdlab-conform!"), 300)[:4096]
				if c.Info.Flags&nbd.FlagReadOnly != 0 {
					if _, err := c.ReadAt(make([]byte, 4096), 0); err != nil {
						return report.Fail, err.Error()
					}
					continue
				}
				if _, err := c.WriteAt(want, 8192); err != nil {
					return report.Fail, err.Error()
				}
				got := make([]byte, len(want))
				if _, err := c.ReadAt(got, 8192); err != nil {
					return report.Fail, err.Error()
				}
				if !bytes.Equal(got, want) {
					return report.Fail, "read back differs from what was written"
				}
			}
			return report.Pass, ""
		}},
		{"transmission/read-nothing", report.Must, "a read of zero bytes succeeds with a well-formed reply (structured: no data chunk of 8 bytes or less)", func(ctx context.Context, p *probe) (report.Status, string) {
			for _, simple := range []bool{true, false} {
				errno, alive, err := requestErrno(ctx, p, simple, nbd.Request{Cmd: nbd.CmdRead, Offset: 512}, nil)
				switch {
				case err != nil:
					return report.Fail, fmt.Sprintf("structured %v: %v", !simple, err)
				case errno == nbd.EINVAL && alive:
					// Allowed: zero-length requests may be refused.
				case errno != 0:
					return report.Fail, fmt.Sprintf("structured %v: %v", !simple, errno)
				case !alive:
					return report.Fail, "the connection did not survive"
				}
			}
			return report.Pass, ""
		}},
		{"transmission/fua-everywhere", report.Must, "with NBD_FLAG_SEND_FUA, NBD_CMD_FLAG_FUA is accepted on every command", func(ctx context.Context, p *probe) (report.Status, string) {
			c, err := p.client(ctx, false)
			if err != nil {
				return report.Fail, err.Error()
			}
			defer c.Close()
			f := c.Info.Flags
			if f&nbd.FlagSendFUA == 0 {
				return report.NA, "NBD_FLAG_SEND_FUA not advertised"
			}
			reqs := []nbd.Request{{Cmd: nbd.CmdRead, Length: 512}}
			if f&nbd.FlagSendFlush != 0 {
				reqs = append(reqs, nbd.Request{Cmd: nbd.CmdFlush})
			}
			if f&nbd.FlagSendCache != 0 {
				reqs = append(reqs, nbd.Request{Cmd: nbd.CmdCache, Length: 4096})
			}
			if c.Info.BaseAlloc {
				reqs = append(reqs, nbd.Request{Cmd: nbd.CmdBlockStatus, Length: 4096})
			}
			for _, r := range reqs {
				r.Flags = nbd.CmdFlagFUA
				if _, err := c.Do(ctx, r, make([]byte, r.Length)); err != nil {
					return report.Fail, fmt.Sprintf("%v with FUA: %v", r.Cmd, err)
				}
			}
			return report.Pass, ""
		}},
		{"transmission/read-past-end", report.Should, "a read past the end is EINVAL", func(ctx context.Context, p *probe) (report.Status, string) {
			size, st, d := exportSize(ctx, p)
			if st != report.Pass {
				return st, d
			}
			return expectErrno(ctx, p, nbd.Request{Cmd: nbd.CmdRead, Offset: uint64(size) - 512, Length: 1024}, make([]byte, 1024), nbd.EINVAL)
		}},
		{"transmission/write-past-end", report.Should, "a write past the end is ENOSPC (EPERM on a read-only export)", func(ctx context.Context, p *probe) (report.Status, string) {
			size, st, d := exportSize(ctx, p)
			if st != report.Pass {
				return st, d
			}
			c, err := p.client(ctx, false)
			if err != nil {
				return report.Fail, err.Error()
			}
			ro := c.Info.Flags&nbd.FlagReadOnly != 0
			c.Close()
			want := nbd.ENOSPC
			if ro {
				want = nbd.EPERM
			}
			return expectErrno(ctx, p, nbd.Request{Cmd: nbd.CmdWrite, Offset: uint64(size) - 1, Length: 2, Data: []byte{1, 2}}, nil, want)
		}},
		{"transmission/offset-overflow", report.Must, "a request whose offset plus length overflows is refused and the session goes on", func(ctx context.Context, p *probe) (report.Status, string) {
			errno, alive, err := requestErrno(ctx, p, false, nbd.Request{Cmd: nbd.CmdRead, Offset: 1<<64 - 512, Length: 1024}, make([]byte, 1024))
			switch {
			case err != nil:
				return report.Fail, err.Error()
			case errno == 0:
				return report.Fail, "a read at 2^64-512 succeeded"
			case !alive:
				return report.Fail, "the connection did not survive"
			}
			return report.Pass, ""
		}},
		{"transmission/unknown-command", report.Should, "an unknown command is EINVAL and the session goes on", func(ctx context.Context, p *probe) (report.Status, string) {
			return expectErrno(ctx, p, nbd.Request{Cmd: 42}, nil, nbd.EINVAL)
		}},
		{"transmission/unknown-flag", report.Should, "an unknown command flag is EINVAL and the session goes on", func(ctx context.Context, p *probe) (report.Status, string) {
			return expectErrno(ctx, p, nbd.Request{Cmd: nbd.CmdRead, Flags: 1 << 13, Length: 512}, make([]byte, 512), nbd.EINVAL)
		}},
		{"transmission/block-status", report.Must, "block status extents start at the offset, are not empty, cover no more than asked, and REQ_ONE gives one", func(ctx context.Context, p *probe) (report.Status, string) {
			c, err := p.client(ctx, false)
			if err != nil {
				return report.Fail, err.Error()
			}
			defer c.Close()
			if !c.Info.BaseAlloc {
				return report.NA, "base:allocation not offered"
			}
			n := min(c.Info.Size, 8<<20)
			for _, flags := range []nbd.CmdFlags{0, nbd.CmdFlagReqOne} {
				ext, err := c.Do(ctx, nbd.Request{Cmd: nbd.CmdBlockStatus, Flags: flags, Length: uint32(n)}, nil)
				if err != nil {
					return report.Fail, err.Error()
				}
				if len(ext) == 0 {
					return report.Fail, "no extents"
				}
				var total int64
				for _, e := range ext {
					if e.Length <= 0 {
						return report.Fail, fmt.Sprintf("an extent of %d bytes", e.Length)
					}
					total += e.Length
				}
				if flags != 0 && len(ext) != 1 {
					return report.Fail, fmt.Sprintf("REQ_ONE gave %d extents", len(ext))
				}
				if total > n && len(ext) > 1 {
					return report.Fail, fmt.Sprintf("%d extents cover %d bytes of the %d asked", len(ext), total, n)
				}
			}
			return report.Pass, ""
		}},
		{"transmission/block-status-needs-context", report.Should, "NBD_CMD_BLOCK_STATUS without a negotiated context is EINVAL", func(ctx context.Context, p *probe) (report.Status, string) {
			return expectErrnoSimple(ctx, p, nbd.Request{Cmd: nbd.CmdBlockStatus, Length: 4096}, nbd.EINVAL)
		}},
		{"transmission/write-zeroes", report.Must, "NBD_CMD_WRITE_ZEROES leaves zeroes", func(ctx context.Context, p *probe) (report.Status, string) {
			c, err := p.client(ctx, false)
			if err != nil {
				return report.Fail, err.Error()
			}
			defer c.Close()
			if c.Info.Flags&nbd.FlagSendWriteZeroes == 0 || c.Info.Flags&nbd.FlagReadOnly != 0 {
				return report.NA, "no NBD_FLAG_SEND_WRITE_ZEROES"
			}
			if _, err := c.WriteAt(bytes.Repeat([]byte{0xa5}, 8192), 16384); err != nil {
				return report.Fail, err.Error()
			}
			if err := c.WriteZeroes(ctx, 16384+1024, 4096, 0); err != nil {
				return report.Fail, err.Error()
			}
			got := make([]byte, 8192)
			if _, err := c.ReadAt(got, 16384); err != nil {
				return report.Fail, err.Error()
			}
			want := append(append(bytes.Repeat([]byte{0xa5}, 1024), make([]byte, 4096)...), bytes.Repeat([]byte{0xa5}, 3072)...)
			if !bytes.Equal(got, want) {
				return report.Fail, "the range does not read as zeroes between the data around it"
			}
			return report.Pass, ""
		}},
		{"transmission/multi-conn", report.Must, "with NBD_FLAG_CAN_MULTI_CONN, what one connection wrote and flushed another reads", func(ctx context.Context, p *probe) (report.Status, string) {
			a, err := p.client(ctx, false)
			if err != nil {
				return report.Fail, err.Error()
			}
			defer a.Close()
			if a.Info.Flags&nbd.FlagCanMultiConn == 0 || a.Info.Flags&nbd.FlagReadOnly != 0 {
				return report.NA, "no NBD_FLAG_CAN_MULTI_CONN, or read-only"
			}
			b, err := p.client(ctx, false)
			if err != nil {
				return report.Fail, err.Error()
			}
			defer b.Close()
			b.ReadAt(make([]byte, 4096), 32768) // b may cache the old data
			want := bytes.Repeat([]byte("multi-conn"), 410)[:4096]
			if _, err := a.WriteAt(want, 32768); err != nil {
				return report.Fail, err.Error()
			}
			if err := a.Flush(ctx); err != nil {
				return report.Fail, err.Error()
			}
			got := make([]byte, 4096)
			if _, err := b.ReadAt(got, 32768); err != nil {
				return report.Fail, err.Error()
			}
			if !bytes.Equal(got, want) {
				return report.Fail, "the other connection read old data after write and flush"
			}
			return report.Pass, ""
		}},
		{"transmission/disc", report.Must, "requests sent before NBD_CMD_DISC are answered, then the server closes", func(ctx context.Context, p *probe) (report.Status, string) {
			c, err := p.dial(ctx)
			if err != nil {
				return report.Fail, err.Error()
			}
			defer c.Close()
			cfg := *p.cfg
			cfg.NoStructuredReplies = true
			_, conn, err := nbd.Negotiate(ctx, c, &cfg)
			if err != nil {
				return report.Fail, err.Error()
			}
			var b []byte
			for i := range 8 {
				b = nbd.AppendRequestHeader(b, nbd.Request{Cmd: nbd.CmdRead, Offset: uint64(i) * 512, Length: 512}, uint64(i+1))
			}
			b = nbd.AppendRequestHeader(b, nbd.Request{Cmd: nbd.CmdDisc}, 99)
			if _, err := conn.Write(b); err != nil {
				return report.Fail, err.Error()
			}
			got, err := io.ReadAll(conn)
			if err != nil && !errors.Is(err, io.EOF) {
				return report.Fail, fmt.Sprintf("after %d bytes: %v", len(got), err)
			}
			if len(got) != 8*(16+512) {
				return report.Fail, fmt.Sprintf("%d bytes before the close, want 8 simple replies of 512 bytes (%d)", len(got), 8*(16+512))
			}
			return report.Pass, ""
		}},
	}
}
