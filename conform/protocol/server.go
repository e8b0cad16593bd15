package protocol

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/nbdlab/nbdlab/conform/report"
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
	Progress func(target string, r report.Result)
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
	level report.Level
	what  string
	run   func(ctx context.Context, p *probe) (report.Status, string)
}

// Checks lists the checks CheckServers runs, in order.
func Checks() []report.CheckInfo {
	var out []report.CheckInfo
	for _, c := range checks() {
		out = append(out, report.CheckInfo{ID: c.id, Level: c.level, What: c.what})
	}
	return out
}

// CheckServers runs the checks against each server. Servers are checked
// side by side, each on its own connections; the checks of one server run
// one after another, in order. Progress, if set, is called for one result
// at a time.
func CheckServers(ctx context.Context, servers []Server, o Options) (*report.Report, error) {
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
	r := &report.Report{Targets: make([]report.Target, len(servers))}
	for _, c := range cs {
		r.Checks = append(r.Checks, report.CheckInfo{ID: c.id, Level: c.level, What: c.what})
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
		r.Targets[i] = report.Target{Name: name, URI: s.URI}
		probes[i] = &probe{uri: u, cfg: cfg, patience: o.Patience}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range servers {
		wg.Add(1)
		go func(t *report.Target, p *probe) {
			defer wg.Done()
			progress := func(res report.Result) {
				if o.Progress != nil {
					mu.Lock()
					o.Progress(t.Name, res)
					mu.Unlock()
				}
			}
			notRun := func(from int) {
				for _, c := range cs[from:] {
					t.Results = append(t.Results, report.Result{ID: c.id, Level: c.level, Status: report.Error})
				}
			}
			if err := p.reachable(ctx); err != nil {
				t.Error = "cannot connect: " + err.Error()
				notRun(0)
				progress(report.Result{ID: "connect", Status: report.Error, Detail: t.Error})
				return
			}
			for i, c := range cs {
				if ctx.Err() != nil {
					return
				}
				start := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 2*o.Patience+30*time.Second)
				st, detail := c.run(cctx, p)
				cancel()
				if st == report.Fail && c.level == report.Should {
					st = report.Warn
				}
				res := report.Result{ID: c.id, Level: c.level, Status: st, Detail: detail, Took: time.Since(start)}
				// A server that crashed is the finding, not the checks
				// after it: each of those would fail for the same reason.
				var gone error
				if st != report.Pass && st != report.NA {
					gone = p.reachable(ctx)
				}
				if gone != nil {
					res.Status, res.Detail = report.Fail, strings.TrimSpace(detail+" (the server died)")
				}
				t.Results = append(t.Results, res)
				progress(res)
				if gone != nil {
					t.Error = fmt.Sprintf("server died during %s: it no longer accepts connections (%v)", c.id, gone)
					notRun(i + 1)
					return
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

// reachable reports whether the server still accepts connections: nil,
// or the error of the last of three tries a little apart, so that one
// dropped connection is not taken for a dead server.
func (p *probe) reachable(ctx context.Context) error {
	var err error
	for try := 0; try < 3; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return nil // the run is ending; that is no finding
			case <-time.After(200 * time.Millisecond):
			}
		}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var c net.Conn
		c, err = p.uri.DialConn(dctx)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
	}
	return err
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
func expectReply(ctx context.Context, p *probe, opt nbd.Option, data []byte, want nbd.ReplyType) (report.Status, string) {
	oc, c, err := p.options(ctx)
	if err != nil {
		return report.Fail, err.Error()
	}
	defer c.Close()
	_, err = oc.Option(opt, data)
	switch got := optionErr(err); {
	case err == nil:
		return report.Fail, fmt.Sprintf("%v succeeded, want %v", opt, want)
	case got == 0:
		return report.Fail, fmt.Sprintf("%v: %v, want %v", opt, err, want)
	case got != want:
		return report.Fail, fmt.Sprintf("%v answered %v, want %v", opt, got, want)
	}
	if _, err := oc.Option(nbd.OptStructuredReply, nil); err != nil && optionErr(err) == 0 {
		return report.Fail, fmt.Sprintf("the session did not go on after %v: %v", want, err)
	}
	return report.Pass, ""
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

func expectErrno(ctx context.Context, p *probe, r nbd.Request, buf []byte, want nbd.Errno) (report.Status, string) {
	got, alive, err := requestErrno(ctx, p, false, r, buf)
	switch {
	case err != nil:
		return report.Fail, err.Error()
	case got != want:
		return report.Fail, fmt.Sprintf("%v %v at %d+%d: %v, want %v", r.Cmd, r.Flags, r.Offset, r.Length, got, want)
	case !alive:
		return report.Fail, "the connection did not survive the error"
	}
	return report.Pass, ""
}

func checks() []check {
	return append(append(handshakeChecks(), transmissionChecks()...), defenceChecks()...)
}

func exportSize(ctx context.Context, p *probe) (int64, report.Status, string) {
	c, err := p.client(ctx, false)
	if err != nil {
		return 0, report.Fail, err.Error()
	}
	defer c.Close()
	if c.Info.Size < 4096 {
		return 0, report.NA, "export smaller than 4 KiB"
	}
	return c.Info.Size, report.Pass, ""
}

func expectErrnoSimple(ctx context.Context, p *probe, r nbd.Request, want nbd.Errno) (report.Status, string) {
	got, alive, err := requestErrno(ctx, p, true, r, nil)
	switch {
	case err != nil:
		return report.Fail, err.Error()
	case got != want:
		return report.Fail, fmt.Sprintf("%v: %v, want %v", r.Cmd, got, want)
	case !alive:
		return report.Fail, "the connection did not survive the error"
	}
	return report.Pass, ""
}

// underLoad runs n clients doing load for a while, bounded by the
// patience, and checks that a new client gets a read answered meanwhile.
func underLoad(ctx context.Context, p *probe, n int, load func(context.Context, net.Conn, nbd.ExportInfo)) (report.Status, string) {
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
		return report.Fail, fmt.Sprintf("only %d of %d load clients connected: %v", started, n, lerr)
	}
	time.Sleep(d / 4)
	start := time.Now()
	cctx, ccancel := context.WithTimeout(ctx, d)
	defer ccancel()
	c, err := p.client(cctx, false)
	if err != nil {
		return report.Fail, fmt.Sprintf("a new client under load: %v", err)
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
			return report.Fail, fmt.Sprintf("a read of a new client under load: %v", err)
		}
	case <-cctx.Done():
		return report.Fail, fmt.Sprintf("a read of a new client under load took over %s", d)
	}
	return report.Pass, fmt.Sprintf("answered in %s", time.Since(start).Round(time.Millisecond))
}
