package conform

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/nbdlab/nbdlab/nbd"
)

// Options configure CheckServers. The zero value runs every check with
// the default bounds.
type Options struct {
	// Run, when set, keeps only the checks whose ID it matches.
	Run func(id string) bool
	// Patience bounds the defence checks: how long a stalled handshake
	// may be held (default 30s), how long the load they make lasts.
	Patience time.Duration
	// Progress, when set, is told of each check as it ends.
	Progress func(target string, r Result)
}

// Server is one server to check.
type Server struct {
	Name string // for the report; default the URI
	URI  string
}

// probe is what a check gets: ways to reach the server.
type probe struct {
	uri      *nbd.URI
	cfg      *nbd.ClientConfig
	patience time.Duration
}

// check is one rule of the specification, for servers.
type check struct {
	id    string
	level Level
	what  string
	run   func(ctx context.Context, p *probe) (Status, string)
}

// Checks lists the checks CheckServers runs, in order.
func Checks() []CheckInfo {
	var out []CheckInfo
	for _, c := range checks() {
		out = append(out, CheckInfo{c.id, c.level, c.what})
	}
	return out
}

// CheckServers runs the checks against each server. Servers are checked
// side by side, each on its own connections; the checks of one server run
// one after another, in order. Progress, if set, is called for one result
// at a time.
func CheckServers(ctx context.Context, servers []Server, o Options) (*Report, error) {
	if o.Patience == 0 {
		o.Patience = 30 * time.Second
	}
	var cs []check
	for _, c := range checks() {
		if o.Run == nil || o.Run(c.id) {
			cs = append(cs, c)
		}
	}
	if len(cs) == 0 {
		return nil, fmt.Errorf("conform: --run matches no check (nbdlab conform server --list shows them all)")
	}
	r := &Report{Targets: make([]Target, len(servers))}
	for _, c := range cs {
		r.Checks = append(r.Checks, CheckInfo{c.id, c.level, c.what})
	}
	probes := make([]*probe, len(servers))
	for i, s := range servers {
		u, err := nbd.ParseURI(s.URI)
		if err != nil {
			return nil, fmt.Errorf("conform: %w", err)
		}
		cfg, err := u.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("conform: %w", err)
		}
		name := s.Name
		if name == "" {
			name = s.URI
		}
		r.Targets[i] = Target{Name: name, URI: s.URI}
		probes[i] = &probe{uri: u, cfg: cfg, patience: o.Patience}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range servers {
		wg.Add(1)
		go func(t *Target, p *probe) {
			defer wg.Done()
			for _, c := range cs {
				if ctx.Err() != nil {
					return
				}
				start := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 2*o.Patience+30*time.Second)
				st, detail := c.run(cctx, p)
				cancel()
				if st == Fail && c.level == Should {
					st = Warn
				}
				res := Result{ID: c.id, Level: c.level, Status: st, Detail: detail, Took: time.Since(start)}
				t.Results = append(t.Results, res)
				if o.Progress != nil {
					mu.Lock()
					o.Progress(t.Name, res)
					mu.Unlock()
				}
			}
		}(&r.Targets[i], probes[i])
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return r, err
	}
	return r, nil
}

// dial opens a fresh transport connection, with a deadline for the check.
func (p *probe) dial(ctx context.Context) (net.Conn, error) {
	c, err := p.uri.DialConn(ctx)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return c, nil
}

// options starts a raw handshake; the caller closes conn.
func (p *probe) options(ctx context.Context) (*nbd.OptionClient, net.Conn, error) {
	c, err := p.dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	oc, err := nbd.StartOptions(c)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return oc, c, nil
}

// client negotiates a client; structured replies unless simple.
func (p *probe) client(ctx context.Context, simple bool) (*nbd.Client, error) {
	c, err := p.dial(ctx)
	if err != nil {
		return nil, err
	}
	cfg := *p.cfg
	cfg.NoStructuredReplies = simple
	cl, err := nbd.NewClient(ctx, c, &cfg)
	if err != nil {
		c.Close()
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl) // negotiating cleared it
	}
	return cl, nil
}

func str(s string) []byte { return binary.BigEndian.AppendUint32(nil, uint32(len(s))) }

// nameQuery is an export name with the 16-bit count of information
// requests (none) that NBD_OPT_INFO and NBD_OPT_GO take.
func nameQuery(name string) []byte { return append(append(str(name), name...), 0, 0) }

// metaQuery is an export name and metadata context queries.
func metaQuery(name string, queries ...string) []byte {
	b := append(str(name), name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = append(append(b, str(q)...), q...)
	}
	return b
}

// optionErr returns the reply type of an option error, or 0.
func optionErr(err error) nbd.ReplyType {
	var oe *nbd.OptionError
	if errors.As(err, &oe) {
		return oe.Reply
	}
	return 0
}

// expectReply checks that opt with data gets the error reply want, and
// that the session goes on after it (an NBD_OPT_LIST... or any option
// gets an answer).
func expectReply(ctx context.Context, p *probe, opt nbd.Option, data []byte, want nbd.ReplyType) (Status, string) {
	oc, c, err := p.options(ctx)
	if err != nil {
		return Fail, err.Error()
	}
	defer c.Close()
	_, err = oc.Option(opt, data)
	switch got := optionErr(err); {
	case err == nil:
		return Fail, fmt.Sprintf("%v succeeded, want %v", opt, want)
	case got == 0:
		return Fail, fmt.Sprintf("%v: %v, want %v", opt, err, want)
	case got != want:
		return Fail, fmt.Sprintf("%v answered %v, want %v", opt, got, want)
	}
	if _, err := oc.Option(nbd.OptStructuredReply, nil); err != nil && optionErr(err) == 0 {
		return Fail, fmt.Sprintf("the session did not go on after %v: %v", want, err)
	}
	return Pass, ""
}

// requestErrno runs one request on a fresh client and returns its errno
// (0 for success) and whether the connection still works after it.
func requestErrno(ctx context.Context, p *probe, simple bool, r nbd.Request, buf []byte) (nbd.Errno, bool, error) {
	c, err := p.client(ctx, simple)
	if err != nil {
		return 0, false, err
	}
	defer c.Close()
	_, err = c.Do(ctx, r, buf)
	var re *nbd.RequestError
	errno := nbd.Errno(0)
	if errors.As(err, &re) {
		errno, err = re.Errno, nil
	}
	if err != nil {
		return 0, false, err
	}
	_, aerr := c.ReadAt(make([]byte, 1), 0)
	return errno, aerr == nil, nil
}

func expectErrno(ctx context.Context, p *probe, r nbd.Request, buf []byte, want nbd.Errno) (Status, string) {
	got, alive, err := requestErrno(ctx, p, false, r, buf)
	switch {
	case err != nil:
		return Fail, err.Error()
	case got != want:
		return Fail, fmt.Sprintf("%v %v at %d+%d: %v, want %v", r.Cmd, r.Flags, r.Offset, r.Length, got, want)
	case !alive:
		return Fail, "the connection did not survive the error"
	}
	return Pass, ""
}

func checks() []check {
	return []check{
		{"handshake/greeting", Must, "the server greets with NBDMAGIC, IHAVEOPT and NBD_FLAG_FIXED_NEWSTYLE", func(ctx context.Context, p *probe) (Status, string) {
			oc, c, err := p.options(ctx)
			if err != nil {
				return Fail, err.Error()
			}
			c.Close()
			if oc.Flags&nbd.FlagFixedNewstyle == 0 {
				return Fail, "no NBD_FLAG_FIXED_NEWSTYLE"
			}
			return Pass, ""
		}},
		{"handshake/unknown-option", Must, "an unknown option gets NBD_REP_ERR_UNSUP and the haggling goes on", func(ctx context.Context, p *probe) (Status, string) {
			return expectReply(ctx, p, nbd.Option(0x4242), []byte("?"), nbd.RepErrUnsup)
		}},
		{"handshake/reply-echoes-option", Must, "every option reply names the option it answers", func(ctx context.Context, p *probe) (Status, string) {
			oc, c, err := p.options(ctx)
			if err != nil {
				return Fail, err.Error()
			}
			defer c.Close()
			for _, opt := range []nbd.Option{nbd.OptList, nbd.OptStructuredReply, nbd.Option(99)} {
				if _, err := oc.Option(opt, nil); err != nil && optionErr(err) == 0 {
					return Fail, err.Error()
				}
			}
			return Pass, ""
		}},
		{"handshake/list", Should, "NBD_OPT_LIST lists exports (NBD_REP_SERVER) and ends with an ACK, or is refused by policy", func(ctx context.Context, p *probe) (Status, string) {
			oc, c, err := p.options(ctx)
			if err != nil {
				return Fail, err.Error()
			}
			defer c.Close()
			rs, err := oc.Option(nbd.OptList, nil)
			if optionErr(err) == nbd.RepErrPolicy || optionErr(err) == nbd.RepErrUnsup {
				return NA, "listing refused by policy"
			}
			if err != nil {
				return Fail, err.Error()
			}
			for _, r := range rs {
				if r.Type != nbd.RepServer || len(r.Data) < 4 || int(binary.BigEndian.Uint32(r.Data)) > len(r.Data)-4 {
					return Fail, fmt.Sprintf("malformed reply %v of %d bytes", r.Type, len(r.Data))
				}
			}
			return Pass, ""
		}},
		{"handshake/list-with-data", Should, "NBD_OPT_LIST with data is NBD_REP_ERR_INVALID", func(ctx context.Context, p *probe) (Status, string) {
			return expectReply(ctx, p, nbd.OptList, []byte("junk"), nbd.RepErrInvalid)
		}},
		{"handshake/structured-with-data", Should, "NBD_OPT_STRUCTURED_REPLY with data is NBD_REP_ERR_INVALID", func(ctx context.Context, p *probe) (Status, string) {
			return expectReply(ctx, p, nbd.OptStructuredReply, []byte("junk"), nbd.RepErrInvalid)
		}},
		{"handshake/info-unknown-export", Should, "NBD_OPT_INFO for an export that does not exist is NBD_REP_ERR_UNKNOWN", func(ctx context.Context, p *probe) (Status, string) {
			return expectReply(ctx, p, nbd.OptInfo, nameQuery("no-such-export-nbdlab"), nbd.RepErrUnknown)
		}},
		{"handshake/info-malformed", Should, "NBD_OPT_INFO whose lengths do not add up is NBD_REP_ERR_INVALID", func(ctx context.Context, p *probe) (Status, string) {
			bad := append(str(p.uri.Export), p.uri.Export...)
			bad = append(bad, 0, 5, 0, 1) // five requests, two bytes of them
			return expectReply(ctx, p, nbd.OptInfo, bad, nbd.RepErrInvalid)
		}},
		{"handshake/info-export", Must, "NBD_OPT_INFO answers NBD_INFO_EXPORT (size and flags) before its ACK", func(ctx context.Context, p *probe) (Status, string) {
			oc, c, err := p.options(ctx)
			if err != nil {
				return Fail, err.Error()
			}
			defer c.Close()
			rs, err := oc.Option(nbd.OptInfo, nameQuery(p.uri.Export))
			if err != nil {
				return Fail, err.Error()
			}
			for _, r := range rs {
				if r.Type == nbd.RepInfo && len(r.Data) == 12 && binary.BigEndian.Uint16(r.Data) == uint16(nbd.InfoExport) {
					if nbd.TransmissionFlags(binary.BigEndian.Uint16(r.Data[10:]))&nbd.FlagHasFlags == 0 {
						return Fail, "transmission flags lack NBD_FLAG_HAS_FLAGS"
					}
					return Pass, ""
				}
			}
			return Fail, "no 12-byte NBD_INFO_EXPORT reply"
		}},
		{"handshake/meta-needs-structured", Should, "NBD_OPT_SET_META_CONTEXT before structured replies is NBD_REP_ERR_INVALID", func(ctx context.Context, p *probe) (Status, string) {
			return expectReply(ctx, p, nbd.OptSetMetaContext, metaQuery(p.uri.Export, nbd.MetaContextBaseAllocation), nbd.RepErrInvalid)
		}},
		{"handshake/list-meta-context", Should, "NBD_OPT_LIST_META_CONTEXT offers base:allocation", func(ctx context.Context, p *probe) (Status, string) {
			oc, c, err := p.options(ctx)
			if err != nil {
				return Fail, err.Error()
			}
			defer c.Close()
			if _, err := oc.Option(nbd.OptStructuredReply, nil); err != nil {
				return NA, "no structured replies"
			}
			rs, err := oc.Option(nbd.OptListMetaContext, metaQuery(p.uri.Export))
			if err != nil {
				return Fail, err.Error()
			}
			for _, r := range rs {
				if r.Type == nbd.RepMetaContext && len(r.Data) > 4 && string(r.Data[4:]) == nbd.MetaContextBaseAllocation {
					return Pass, ""
				}
			}
			return Fail, "base:allocation not listed"
		}},
		{"handshake/abort", Must, "NBD_OPT_ABORT is acknowledged (the connection then closes)", func(ctx context.Context, p *probe) (Status, string) {
			oc, c, err := p.options(ctx)
			if err != nil {
				return Fail, err.Error()
			}
			defer c.Close()
			if _, err := oc.Option(nbd.OptAbort, nil); err != nil {
				return Fail, fmt.Sprintf("no NBD_REP_ACK: %v", err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
				return Fail, "the connection stayed open 5s after NBD_OPT_ABORT"
			}
			return Pass, ""
		}},
		{"handshake/default-export-meta", Must, "base:allocation asked for the default export by the empty name, then NBD_OPT_GO with the empty name: NBD_CMD_BLOCK_STATUS works", func(ctx context.Context, p *probe) (Status, string) {
			conn, err := p.dial(ctx)
			if err != nil {
				return Fail, err.Error()
			}
			cfg := *p.cfg
			cfg.Export = ""
			c, err := nbd.NewClient(ctx, conn, &cfg)
			if got := optionErr(err); got == nbd.RepErrUnknown || got == nbd.RepErrPolicy {
				conn.Close()
				return NA, "no default export"
			}
			if err != nil {
				conn.Close()
				return Fail, err.Error()
			}
			defer c.Close()
			if !c.Info.Structured {
				return NA, "no structured replies"
			}
			if !c.Info.BaseAlloc {
				return NA, "base:allocation not offered"
			}
			n := min(c.Info.Size, 1<<20)
			if _, err := c.BlockStatus(ctx, 0, n); err != nil {
				return Fail, err.Error()
			}
			return Pass, ""
		}},
		{"transmission/read", Must, "reads return the bytes written, with simple and structured replies", func(ctx context.Context, p *probe) (Status, string) {
			for _, simple := range []bool{true, false} {
				c, err := p.client(ctx, simple)
				if err != nil {
					return Fail, err.Error()
				}
				defer c.Close()
				want := bytes.Repeat([]byte("nbdlab-conform!"), 300)[:4096]
				if c.Info.Flags&nbd.FlagReadOnly != 0 {
					if _, err := c.ReadAt(make([]byte, 4096), 0); err != nil {
						return Fail, err.Error()
					}
					continue
				}
				if _, err := c.WriteAt(want, 8192); err != nil {
					return Fail, err.Error()
				}
				got := make([]byte, len(want))
				if _, err := c.ReadAt(got, 8192); err != nil {
					return Fail, err.Error()
				}
				if !bytes.Equal(got, want) {
					return Fail, "read back differs from what was written"
				}
			}
			return Pass, ""
		}},
		{"transmission/read-nothing", Must, "a read of zero bytes succeeds with a well-formed reply (structured: no data chunk of 8 bytes or less)", func(ctx context.Context, p *probe) (Status, string) {
			for _, simple := range []bool{true, false} {
				errno, alive, err := requestErrno(ctx, p, simple, nbd.Request{Cmd: nbd.CmdRead, Offset: 512}, nil)
				switch {
				case err != nil:
					return Fail, fmt.Sprintf("structured %v: %v", !simple, err)
				case errno == nbd.EINVAL && alive:
					// Allowed: zero-length requests may be refused.
				case errno != 0:
					return Fail, fmt.Sprintf("structured %v: %v", !simple, errno)
				case !alive:
					return Fail, "the connection did not survive"
				}
			}
			return Pass, ""
		}},
		{"transmission/fua-everywhere", Must, "with NBD_FLAG_SEND_FUA, NBD_CMD_FLAG_FUA is accepted on every command", func(ctx context.Context, p *probe) (Status, string) {
			c, err := p.client(ctx, false)
			if err != nil {
				return Fail, err.Error()
			}
			defer c.Close()
			f := c.Info.Flags
			if f&nbd.FlagSendFUA == 0 {
				return NA, "NBD_FLAG_SEND_FUA not advertised"
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
					return Fail, fmt.Sprintf("%v with FUA: %v", r.Cmd, err)
				}
			}
			return Pass, ""
		}},
		{"transmission/read-past-end", Should, "a read past the end is EINVAL", func(ctx context.Context, p *probe) (Status, string) {
			size, st, d := exportSize(ctx, p)
			if st != Pass {
				return st, d
			}
			return expectErrno(ctx, p, nbd.Request{Cmd: nbd.CmdRead, Offset: uint64(size) - 512, Length: 1024}, make([]byte, 1024), nbd.EINVAL)
		}},
		{"transmission/write-past-end", Should, "a write past the end is ENOSPC (EPERM on a read-only export)", func(ctx context.Context, p *probe) (Status, string) {
			size, st, d := exportSize(ctx, p)
			if st != Pass {
				return st, d
			}
			c, err := p.client(ctx, false)
			if err != nil {
				return Fail, err.Error()
			}
			ro := c.Info.Flags&nbd.FlagReadOnly != 0
			c.Close()
			want := nbd.ENOSPC
			if ro {
				want = nbd.EPERM
			}
			return expectErrno(ctx, p, nbd.Request{Cmd: nbd.CmdWrite, Offset: uint64(size) - 1, Length: 2, Data: []byte{1, 2}}, nil, want)
		}},
		{"transmission/offset-overflow", Must, "a request whose offset plus length overflows is refused and the session goes on", func(ctx context.Context, p *probe) (Status, string) {
			errno, alive, err := requestErrno(ctx, p, false, nbd.Request{Cmd: nbd.CmdRead, Offset: 1<<64 - 512, Length: 1024}, make([]byte, 1024))
			switch {
			case err != nil:
				return Fail, err.Error()
			case errno == 0:
				return Fail, "a read at 2^64-512 succeeded"
			case !alive:
				return Fail, "the connection did not survive"
			}
			return Pass, ""
		}},
		{"transmission/unknown-command", Should, "an unknown command is EINVAL and the session goes on", func(ctx context.Context, p *probe) (Status, string) {
			return expectErrno(ctx, p, nbd.Request{Cmd: 42}, nil, nbd.EINVAL)
		}},
		{"transmission/unknown-flag", Should, "an unknown command flag is EINVAL and the session goes on", func(ctx context.Context, p *probe) (Status, string) {
			return expectErrno(ctx, p, nbd.Request{Cmd: nbd.CmdRead, Flags: 1 << 13, Length: 512}, make([]byte, 512), nbd.EINVAL)
		}},
		{"transmission/block-status", Must, "block status extents start at the offset, are not empty, cover no more than asked, and REQ_ONE gives one", func(ctx context.Context, p *probe) (Status, string) {
			c, err := p.client(ctx, false)
			if err != nil {
				return Fail, err.Error()
			}
			defer c.Close()
			if !c.Info.BaseAlloc {
				return NA, "base:allocation not offered"
			}
			n := min(c.Info.Size, 8<<20)
			for _, flags := range []nbd.CmdFlags{0, nbd.CmdFlagReqOne} {
				ext, err := c.Do(ctx, nbd.Request{Cmd: nbd.CmdBlockStatus, Flags: flags, Length: uint32(n)}, nil)
				if err != nil {
					return Fail, err.Error()
				}
				if len(ext) == 0 {
					return Fail, "no extents"
				}
				var total int64
				for _, e := range ext {
					if e.Length <= 0 {
						return Fail, fmt.Sprintf("an extent of %d bytes", e.Length)
					}
					total += e.Length
				}
				if flags != 0 && len(ext) != 1 {
					return Fail, fmt.Sprintf("REQ_ONE gave %d extents", len(ext))
				}
				if total > n && len(ext) > 1 {
					return Fail, fmt.Sprintf("%d extents cover %d bytes of the %d asked", len(ext), total, n)
				}
			}
			return Pass, ""
		}},
		{"transmission/block-status-needs-context", Should, "NBD_CMD_BLOCK_STATUS without a negotiated context is EINVAL", func(ctx context.Context, p *probe) (Status, string) {
			return expectErrnoSimple(ctx, p, nbd.Request{Cmd: nbd.CmdBlockStatus, Length: 4096}, nbd.EINVAL)
		}},
		{"transmission/write-zeroes", Must, "NBD_CMD_WRITE_ZEROES leaves zeroes", func(ctx context.Context, p *probe) (Status, string) {
			c, err := p.client(ctx, false)
			if err != nil {
				return Fail, err.Error()
			}
			defer c.Close()
			if c.Info.Flags&nbd.FlagSendWriteZeroes == 0 || c.Info.Flags&nbd.FlagReadOnly != 0 {
				return NA, "no NBD_FLAG_SEND_WRITE_ZEROES"
			}
			if _, err := c.WriteAt(bytes.Repeat([]byte{0xa5}, 8192), 16384); err != nil {
				return Fail, err.Error()
			}
			if err := c.WriteZeroes(ctx, 16384+1024, 4096, 0); err != nil {
				return Fail, err.Error()
			}
			got := make([]byte, 8192)
			if _, err := c.ReadAt(got, 16384); err != nil {
				return Fail, err.Error()
			}
			want := append(append(bytes.Repeat([]byte{0xa5}, 1024), make([]byte, 4096)...), bytes.Repeat([]byte{0xa5}, 3072)...)
			if !bytes.Equal(got, want) {
				return Fail, "the range does not read as zeroes between the data around it"
			}
			return Pass, ""
		}},
		{"transmission/multi-conn", Must, "with NBD_FLAG_CAN_MULTI_CONN, what one connection wrote and flushed another reads", func(ctx context.Context, p *probe) (Status, string) {
			a, err := p.client(ctx, false)
			if err != nil {
				return Fail, err.Error()
			}
			defer a.Close()
			if a.Info.Flags&nbd.FlagCanMultiConn == 0 || a.Info.Flags&nbd.FlagReadOnly != 0 {
				return NA, "no NBD_FLAG_CAN_MULTI_CONN, or read-only"
			}
			b, err := p.client(ctx, false)
			if err != nil {
				return Fail, err.Error()
			}
			defer b.Close()
			b.ReadAt(make([]byte, 4096), 32768) // b may cache the old data
			want := bytes.Repeat([]byte("multi-conn"), 410)[:4096]
			if _, err := a.WriteAt(want, 32768); err != nil {
				return Fail, err.Error()
			}
			if err := a.Flush(ctx); err != nil {
				return Fail, err.Error()
			}
			got := make([]byte, 4096)
			if _, err := b.ReadAt(got, 32768); err != nil {
				return Fail, err.Error()
			}
			if !bytes.Equal(got, want) {
				return Fail, "the other connection read old data after write and flush"
			}
			return Pass, ""
		}},
		{"transmission/disc", Must, "requests sent before NBD_CMD_DISC are answered, then the server closes", func(ctx context.Context, p *probe) (Status, string) {
			c, err := p.dial(ctx)
			if err != nil {
				return Fail, err.Error()
			}
			defer c.Close()
			cfg := *p.cfg
			cfg.NoStructuredReplies = true
			_, conn, err := nbd.Negotiate(ctx, c, &cfg)
			if err != nil {
				return Fail, err.Error()
			}
			var b []byte
			for i := range 8 {
				b = nbd.AppendRequestHeader(b, nbd.Request{Cmd: nbd.CmdRead, Offset: uint64(i) * 512, Length: 512}, uint64(i+1))
			}
			b = nbd.AppendRequestHeader(b, nbd.Request{Cmd: nbd.CmdDisc}, 99)
			if _, err := conn.Write(b); err != nil {
				return Fail, err.Error()
			}
			got, err := io.ReadAll(conn)
			if err != nil && !errors.Is(err, io.EOF) {
				return Fail, fmt.Sprintf("after %d bytes: %v", len(got), err)
			}
			if len(got) != 8*(16+512) {
				return Fail, fmt.Sprintf("%d bytes before the close, want 8 simple replies of 512 bytes (%d)", len(got), 8*(16+512))
			}
			return Pass, ""
		}},
		{"defence/stalled-handshake", Should, "a client silent half way through the handshake is dropped (within the patience, 30s by default)", func(ctx context.Context, p *probe) (Status, string) {
			c, err := p.dial(ctx)
			if err != nil {
				return Fail, err.Error()
			}
			defer c.Close()
			c.Write([]byte{0, 0, 0, 3}) // client flags, then nothing
			c.SetReadDeadline(time.Now().Add(p.patience))
			start := time.Now()
			_, err = io.Copy(io.Discard, c)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return Fail, fmt.Sprintf("still held after %s", p.patience)
			}
			return Pass, fmt.Sprintf("dropped after %s", time.Since(start).Round(100*time.Millisecond))
		}},
		{"defence/clients-that-do-not-read", Should, "while 8 clients pipeline 1 MiB reads and read no reply, a new client is served", func(ctx context.Context, p *probe) (Status, string) {
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
		{"defence/idle-clients", Should, "while 200 clients sit idle after the handshake, a new client is served", func(ctx context.Context, p *probe) (Status, string) {
			return underLoad(ctx, p, 200, func(ctx context.Context, conn net.Conn, info nbd.ExportInfo) { <-ctx.Done() })
		}},
	}
}

func exportSize(ctx context.Context, p *probe) (int64, Status, string) {
	c, err := p.client(ctx, false)
	if err != nil {
		return 0, Fail, err.Error()
	}
	defer c.Close()
	if c.Info.Size < 4096 {
		return 0, NA, "export smaller than 4 KiB"
	}
	return c.Info.Size, Pass, ""
}

func expectErrnoSimple(ctx context.Context, p *probe, r nbd.Request, want nbd.Errno) (Status, string) {
	got, alive, err := requestErrno(ctx, p, true, r, nil)
	switch {
	case err != nil:
		return Fail, err.Error()
	case got != want:
		return Fail, fmt.Sprintf("%v: %v, want %v", r.Cmd, got, want)
	case !alive:
		return Fail, "the connection did not survive the error"
	}
	return Pass, ""
}

// underLoad runs n clients doing load for a while, bounded by the
// patience, and checks that a new client gets a read answered meanwhile.
func underLoad(ctx context.Context, p *probe, n int, load func(context.Context, net.Conn, nbd.ExportInfo)) (Status, string) {
	d := min(p.patience, 10*time.Second)
	lctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	started := 0
	var lerr error
	for range n {
		c, err := p.dial(lctx)
		if err != nil {
			lerr = err
			break
		}
		cfg := *p.cfg
		cfg.NoStructuredReplies = true
		info, conn, err := nbd.Negotiate(lctx, c, &cfg)
		if err != nil {
			c.Close()
			lerr = err
			break
		}
		started++
		conn.SetDeadline(time.Now().Add(d))
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			load(lctx, conn, info)
		}()
	}
	defer wg.Wait()
	if started < n {
		return Fail, fmt.Sprintf("only %d of %d load clients connected: %v", started, n, lerr)
	}
	time.Sleep(d / 4)
	start := time.Now()
	cctx, ccancel := context.WithTimeout(ctx, d)
	defer ccancel()
	c, err := p.client(cctx, false)
	if err != nil {
		return Fail, fmt.Sprintf("a new client under load: %v", err)
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 4096), 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return Fail, fmt.Sprintf("a read of a new client under load: %v", err)
		}
	case <-cctx.Done():
		return Fail, fmt.Sprintf("a read of a new client under load took over %s", d)
	}
	return Pass, fmt.Sprintf("answered in %s", time.Since(start).Round(time.Millisecond))
}
