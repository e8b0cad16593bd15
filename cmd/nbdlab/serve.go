package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nbdlab/nbdlab/internal/procfs"
	"github.com/nbdlab/nbdlab/internal/ready"
	"github.com/nbdlab/nbdlab/internal/service"
	"github.com/nbdlab/nbdlab/nbd"
	"golang.org/x/sys/unix"
)

const serveUsage = "[--listen ADDR]... [--inetd] [--tls-cert FILE --tls-key FILE [--tls-ca FILE]] [--pid-file FILE] [-v|-q] NAME=SPEC..."

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) (rerr error) {
	fs := newFlagSet("serve", serveUsage, stderr)
	var listen stringList
	fs.Var(&listen, "listen", "`ADDR` to listen on: HOST:PORT or unix:PATH; repeatable (default 127.0.0.1:10809)")
	cert := fs.String("tls-cert", "", "TLS certificate `FILE` (PEM); makes TLS mandatory")
	key := fs.String("tls-key", "", "TLS private key `FILE` (PEM)")
	ca := fs.String("tls-ca", "", "CA `FILE` (PEM): require client certificates signed by it")
	verbose := fs.Bool("v", false, "trace every request")
	quiet := fs.Bool("q", false, "log only warnings and errors")
	logFormat := fs.String("log-format", "text", "log as `text` (key=value lines) or json, on standard error")
	logFile := fs.String("log-file", "", "append the log to `FILE` instead of standard error; with --fork the only place the background server's log (and a crash's) goes")
	inetd := fs.Bool("inetd", false, "serve the one connection on standard input, then exit (inetd; systemd Accept=yes); logs are dropped when standard error is that socket")
	port := fs.Int("port", 0, "listen on `PORT` of --bind's address: qemu-nbd's spelling, the same as --listen ADDR:PORT (also -p)")
	fs.IntVar(port, "p", 0, internalFlag+"qemu-nbd's spelling of --port")
	bind := fs.String("bind", "127.0.0.1", "the `ADDR` --port listens on (also -b); unlike qemu-nbd's, the default is loopback only")
	fs.StringVar(bind, "b", "127.0.0.1", internalFlag+"qemu-nbd's spelling of --bind")
	allRO := fs.Bool("read-only", false, "serve every export read-only, as if each had ,ro (also -r)")
	fs.BoolVar(allRO, "r", false, internalFlag+"qemu-nbd's spelling of --read-only")
	forceShare := fs.Bool("force-share", false, "open read-only and copy-on-write images without QEMU's locks, so that they can be read while another process writes them (as qemu-img -U; also -U); writers are always locked")
	fs.BoolVar(forceShare, "U", false, internalFlag+"qemu-img's spelling of --force-share")
	fork := fs.Bool("fork", false, "go to the background once every listener is up (as qemu-nbd --fork); with --pid-file, the background process's pid; its log goes to --log-file, or nowhere")
	config := fs.String("config", "", "read more exports from `FILE`, one NAME=SPEC a line (# comments); SIGHUP reads it again: new exports appear, removed ones refuse new clients")
	pidFile := fs.String("pid-file", "", "write the server's pid to `FILE` once it listens, and remove it on exit")
	grace := fs.Duration("shutdown-timeout", 30*time.Second, "on SIGINT/SIGTERM, how long to wait for requests in flight")
	maxConns := fs.Int("max-connections", nbd.DefaultMaxConnections, "connections served at once; more are closed at once (-1: no limit; also -e, --shared)")
	fs.IntVar(maxConns, "e", nbd.DefaultMaxConnections, internalFlag+"qemu-nbd's spelling of --max-connections")
	fs.IntVar(maxConns, "shared", nbd.DefaultMaxConnections, internalFlag+"qemu-nbd's spelling of --max-connections")
	socket := fs.String("socket", "", "listen on the unix socket `PATH`: qemu-nbd's spelling, the same as --listen unix:PATH (also -k)")
	fs.StringVar(socket, "k", "", internalFlag+"qemu-nbd's spelling of --socket")
	snapshot := fs.Bool("snapshot", false, "serve every image copy-on-write, as if each had ,cow: writes are kept in memory and the image is never modified (also -s)")
	fs.BoolVar(snapshot, "s", false, internalFlag+"qemu-nbd's spelling of --snapshot")
	exportName := fs.String("export-name", "", "the `NAME` of the one bare IMAGE argument, instead of its file name (qemu-nbd's -x; also -x)")
	fs.StringVar(exportName, "x", "", internalFlag+"qemu-nbd's spelling of --export-name")
	format := fs.String("format", "auto", "the `FORMAT` of the one bare IMAGE argument: raw, qcow2, or auto (by its header; also -f)")
	fs.StringVar(format, "f", "auto", internalFlag+"qemu-nbd's spelling of --format")
	persistent := fs.Bool("persistent", false, "accepted for qemu-nbd's sake: serve always serves client after client until stopped (also -t)")
	fs.BoolVar(persistent, "t", false, internalFlag+"qemu-nbd's spelling of --persistent")
	hsTimeout := fs.Duration("handshake-timeout", nbd.DefaultHandshakeTimeout, "drop a client that has not chosen an export in this time, TLS included (-1s: never)")
	idleTimeout := fs.Duration("idle-timeout", 0, "drop a client that sends no request for this long (0: never; the kernel's client may idle for days)")
	writeTimeout := fs.Duration("write-timeout", nbd.DefaultWriteTimeout, "drop a client that takes none of its replies for this long (-1s: never)")
	maxPayload := fs.String("max-payload", "64M", "largest read or write served, at most a client's share of --max-inflight; advertised as the maximum block size")
	workers := fs.Int("workers", nbd.DefaultWorkers, "requests of one connection that run at once")
	maxInflight := fs.String("max-inflight", "256M", "bytes of requests all clients together may have in flight; one client a quarter of it")
	record := fs.String("record", "", "append every request as it is read (connection, command, flags, offset, length) to `FILE` as JSON lines")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile (go tool pprof) to `FILE` until the server stops")
	runCmd := fs.String("run", "", "captive mode, as nbdkit's: once listening, run `CMD` (sh -c) with $uri (and $nbd) set to the first export's URI, $unixsocket or $port, and stop when it exits, with its exit status")
	exitWithParent := fs.Bool("exit-with-parent", false, "stop when the process that started serve exits (as nbdkit's; Linux PR_SET_PDEATHSIG)")
	readyFD := fs.Int("ready-fd", -1, "once every listener is up, write \"ok ADDR...\" (the addresses listened on) to descriptor `FD` and close it")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `usage: nbdlab serve %s

Serve one or more exports over NBD (fixed newstyle, structured replies,
base:allocation block status, TLS). SPEC is file:PATH (a regular file or a
block device), qcow2:PATH (a qcow2 image and its backing chain) or mem:SIZE
(sparse, in memory), followed by ,ro for read-only, ,cow to keep writes
aside and never modify the base, ,offset=N and ,length=N to serve part of
it, or, for tests, ,eio=OFF+LEN (that range fails with EIO). A bare path
to a file is an export named after it, as qemu-nbd takes one. The first
export also answers the empty export name.
`, serveUsage)
		printFlags(fs, stderr, "\nflags:\n")
	}
	specs, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(specs) == 0 && *config == "" {
		return usagef("no exports given")
	}
	if *port != 0 {
		if *port < 0 || *port > 65535 {
			return usagef("--port %d: want 1 to 65535", *port)
		}
		listen = append(listen, net.JoinHostPort(*bind, strconv.Itoa(*port)))
	}
	if *socket != "" {
		listen = append(listen, "unix:"+*socket)
	}
	bare := 0
	for _, a := range specs {
		if !strings.Contains(a, "=") {
			bare++
		}
	}
	if (*exportName != "" || *format != "auto") && bare != 1 {
		return usagef("--export-name (-x) and --format (-f) are for one bare IMAGE argument, as qemu-nbd takes it; got %d: give NAME=file:PATH or NAME=qcow2:PATH for each instead", bare)
	}
	if *format != "auto" && *format != "raw" && *format != "qcow2" {
		return usagef("--format %q: %v", *format, nbd.ErrFormat)
	}
	if *verbose && *quiet {
		return usagef("-v and -q contradict each other")
	}
	if *fork {
		if *inetd || *readyFD >= 0 {
			return usagef("--fork goes with neither --inetd nor --ready-fd")
		}
		return forkServe(ctx, args, stderr, *logFile == "" && !*quiet)
	}
	if *runCmd != "" && (*fork || *inetd) {
		return usagef("--run waits for its command here: it goes with neither --fork nor --inetd")
	}
	if *exitWithParent {
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGTERM), 0, 0, 0); err != nil {
			return fmt.Errorf("--exit-with-parent: %w", err)
		}
		if os.Getppid() == 1 {
			return errors.New("--exit-with-parent: the parent has already exited")
		}
	}
	if *inetd && len(listen) > 0 {
		return usagef("--inetd serves standard input: it takes no --listen")
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	set := &exportSet{readOnly: *allRO, forceShare: *forceShare, snapshot: *snapshot, bareName: *exportName, bareFormat: *format, open: map[string]openExport{}, retired: map[*nbd.Export]io.Closer{}}
	// Closing an export waits for its backend calls (a qcow2 image's
	// metadata goes out under its lock): not after a shutdown that gave
	// up on a backend that does not answer.
	abandoned := false
	defer func() {
		if !abandoned {
			set.close()
		}
	}()
	exports, err := set.load(specs, *config)
	if err != nil {
		return err
	}
	if (*cert != "" || *key != "" || *ca != "") && (*cert == "" || *key == "") {
		return usagef("--tls-cert and --tls-key go together")
	}
	tlsConfig, err := nbd.ServerTLSConfig(*cert, *key, *ca)
	if err != nil {
		return err
	}
	logOut := stderr
	var logf *os.File
	if *logFile != "" {
		logf, err = os.OpenFile(*logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("--log-file: %w", err)
		}
		defer logf.Close()
		logOut = logf
	}
	log, err := newLogger(logOut, *logFormat, *verbose, *quiet, *inetd)
	if err != nil {
		return err
	}
	inflight, err := nbd.ParseSize(*maxInflight)
	if err != nil || inflight < 1<<20 {
		return usagef("--max-inflight %q: want a size of at least 1M, like 256M or 1G", *maxInflight)
	}
	payload, err := nbd.ParseSize(*maxPayload)
	if err != nil || payload < 1<<20 || payload > inflight/4 {
		return usagef("--max-payload %q: want a size from 1M to a quarter of --max-inflight (%d bytes)", *maxPayload, inflight/4)
	}
	if *workers < 1 {
		return usagef("--workers %d: want at least 1", *workers)
	}
	srv := &nbd.Server{Exports: exports, TLSConfig: tlsConfig, Logger: log,
		MaxConnections: *maxConns, HandshakeTimeout: *hsTimeout, IdleTimeout: *idleTimeout,
		WriteTimeout: *writeTimeout, MaxInflight: inflight, MaxPayload: payload, Workers: *workers,
		Retired: set.release}
	if *record != "" {
		rec, finish, err := recorder(*record, log)
		if err != nil {
			return err
		}
		defer func() {
			if err := finish(); err != nil && rerr == nil {
				rerr = err
			}
		}()
		srv.Record = rec
	}
	var sig *ready.Signal
	if *readyFD >= 0 {
		sig = ready.Open(*readyFD)
	}
	fail := func(err error) error {
		if sig != nil {
			sig.Fail(err)
		}
		return err
	}
	lns, err := listeners(listen, *inetd)
	if err != nil {
		return fail(err)
	}
	errc := make(chan error, len(lns)+1)
	var addrs []string
	for _, l := range lns {
		addrs = append(addrs, nbd.AddrOf(l).String())
		log.Info("listening", "addr", addrs[len(addrs)-1])
		go func() { errc <- srv.Serve(l) }()
	}
	if *inetd {
		c, err := service.Inetd()
		if err != nil {
			return fail(err)
		}
		addrs = append(addrs, "inetd")
		// Not ctx: on SIGTERM, Shutdown below drains the session
		// gracefully; ServeConn's ctx would cut it off at once.
		go func() { errc <- srv.ServeConn(context.Background(), c) }()
	}
	if *pidFile != "" {
		remove, err := service.PIDFile(*pidFile)
		if err != nil {
			srv.Close()
			return fail(err)
		}
		defer func() {
			if err := remove(); err != nil && rerr == nil {
				rerr = err
			}
		}()
	}
	if sig != nil {
		if err := sig.OK(strings.Join(addrs, " ")); err != nil {
			log.Warn("cannot report readiness", "fd", *readyFD, "err", err)
		}
	}
	if os.Getenv(forkedEnv) == "1" {
		os.Unsetenv(forkedEnv)
		detachOutput(logf)
	}
	if err := service.Notify("READY=1"); err != nil {
		log.Warn("cannot tell the service manager we are ready", "err", err)
	}
	for _, e := range exports {
		log.Info("export", "name", e.Name, "size", e.Backend.Size(), "read_only", e.ReadOnly)
	}
	var captive <-chan error
	if *runCmd != "" {
		if captive, err = runCaptive(*runCmd, lns, exports, log); err != nil {
			srv.Close()
			return err
		}
	}
	var captiveErr error
	hup := make(chan os.Signal, 1)
	if *config != "" {
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}
	for stopping := false; !stopping; {
		select {
		case <-hup:
			set.reload(srv, specs, *config, log)
		case err := <-errc:
			if *inetd {
				// The one connection ended: flush the exports and go.
				sctx, cancel := context.WithTimeout(context.Background(), *grace)
				defer cancel()
				if serr := srv.Shutdown(sctx); serr != nil && !errors.Is(serr, context.DeadlineExceeded) {
					return serr
				}
				if err != nil {
					return fmt.Errorf("inetd connection: %w", err)
				}
				return nil
			}
			srv.Close()
			return err
		case <-ctx.Done():
			stopping = true
		case captiveErr = <-captive:
			stopping = true
		}
	}
	service.Notify("STOPPING=1")
	log.Info("shutting down: finishing requests in flight")
	sctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	if err := srv.Shutdown(sctx); errors.Is(err, context.DeadlineExceeded) {
		abandoned = true
		log.Warn("stopped with requests still running after the grace period: a backend that does not answer? Their exports are not flushed", "grace", *grace)
		return captiveErr
	} else if err != nil {
		return err
	}
	log.Info("stopped")
	return captiveErr
}

// runCaptive runs --run's command with the address of the first export in
// its environment, as nbdkit's captive mode does, and reports on the
// channel how it ended: nil, or an exitError with its status.
func runCaptive(command string, lns []net.Listener, exports []*nbd.Export, log *slog.Logger) (<-chan error, error) {
	if len(lns) == 0 || len(exports) == 0 {
		return nil, usagef("--run needs a listener and an export")
	}
	a := nbd.AddrOf(lns[0])
	uri := a.URI(exports[0].Name)
	env := append(os.Environ(), "uri="+uri, "nbd="+uri)
	if a.Network == "unix" {
		env = append(env, "unixsocket="+a.Address)
	} else if _, port, err := net.SplitHostPort(a.Address); err == nil {
		env = append(env, "port="+port)
	}
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Env, cmd.Stdin, cmd.Stdout, cmd.Stderr = env, os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("--run: %w", err)
	}
	log.Info("running the captive command", "cmd", command, "uri", uri, "pid", cmd.Process.Pid)
	done := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee) && ee.ExitCode() > 0:
			log.Info("the captive command exited", "status", ee.ExitCode())
			done <- exitError{code: ee.ExitCode()}
		case err != nil:
			done <- fmt.Errorf("--run: %w", err)
		default:
			done <- nil
		}
	}()
	return done, nil
}

// openExport is an export opened from its argument.
type openExport struct {
	arg    string
	export *nbd.Export
	closer io.Closer
}

// exportSet is what the command line and --config export, kept open by
// name so that a reload opens only what changed.
type exportSet struct {
	readOnly, forceShare, snapshot bool
	bareName, bareFormat           string // -x and -f: for a bare IMAGE argument
	open                           map[string]openExport

	mu      sync.Mutex
	retired map[*nbd.Export]io.Closer // taken out by a reload: closed once unused (nbd.Server.Retired), or at exit
}

// load opens the exports of args and of the config file, in that order,
// reusing the open ones whose argument did not change.
func (s *exportSet) load(args []string, config string) ([]*nbd.Export, error) {
	all := slices.Clone(args)
	if config != "" {
		lines, err := readConfig(config)
		if err != nil {
			return nil, err
		}
		all = append(all, lines...)
	}
	var exports []*nbd.Export
	next := map[string]openExport{}
	for _, a := range all {
		spec, err := parseServeArg(a, s.bareName, s.bareFormat)
		if err != nil {
			return nil, usageError{err.Error()}
		}
		spec.ReadOnly = spec.ReadOnly || s.readOnly
		spec.COW = spec.COW || (s.snapshot && spec.Kind != "mem")
		if s.forceShare && spec.Kind != "mem" {
			if !spec.ReadOnly && !spec.COW {
				return nil, usagef("--force-share: export %q is read-write, and a writer always takes QEMU's locks: give it ,ro or ,cow, or add --read-only", spec.Name)
			}
			spec.ForceShare = true
		}
		if _, dup := next[spec.Name]; dup {
			return nil, usagef("export name %q given twice", spec.Name)
		}
		if cur, ok := s.open[spec.Name]; ok && cur.arg == a {
			next[spec.Name] = cur
			exports = append(exports, cur.export)
			continue
		}
		e, closer, err := spec.Open()
		if err != nil {
			for name, o := range next {
				if s.open[name].export != o.export {
					o.closer.Close() // opened for this load only
				}
			}
			return nil, err
		}
		next[spec.Name] = openExport{a, e, closer}
		exports = append(exports, e)
	}
	s.mu.Lock()
	for name, o := range s.open {
		if next[name].export != o.export {
			s.retired[o.export] = o.closer
		}
	}
	s.mu.Unlock()
	s.open = next
	return exports, nil
}

// reload reads the config again and serves what it says; on any error
// the exports stay as they were.
func (s *exportSet) reload(srv *nbd.Server, args []string, config string, log *slog.Logger) {
	before := map[string]bool{}
	for name := range s.open {
		before[name] = true
	}
	exports, err := s.load(args, config)
	if err != nil {
		log.Error("SIGHUP: config not reloaded; the exports stay as they were", "config", config, "err", err)
		return
	}
	srv.SetExports(exports)
	var added, removed []string
	for name := range s.open {
		if !before[name] {
			added = append(added, name)
		}
		delete(before, name)
	}
	for name := range before {
		removed = append(removed, name)
	}
	log.Info("SIGHUP: config reloaded", "config", config, "exports", len(exports), "added", strings.Join(added, ","), "removed", strings.Join(removed, ","))
}

// release closes an export a reload took out, once the server says no
// connection uses it any more.
func (s *exportSet) release(e *nbd.Export) {
	s.mu.Lock()
	c := s.retired[e]
	delete(s.retired, e)
	s.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

func (s *exportSet) close() {
	for _, o := range s.open {
		o.closer.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for e, c := range s.retired {
		c.Close()
		delete(s.retired, e)
	}
}

// readConfig reads one export argument a line; blank lines and lines
// starting with # are skipped.
func readConfig(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return out, nil
}

// parseServeArg parses NAME=SPEC; a bare path to an existing file, as
// qemu-nbd takes one, is an export named after the file (answering the
// empty name too when it comes first), qcow2 by its header, else raw.
func parseServeArg(a, name, format string) (nbd.ExportSpec, error) {
	if !strings.Contains(a, "=") {
		fi, err := os.Stat(a)
		if err != nil {
			return nbd.ExportSpec{}, fmt.Errorf("export %q: %w: give the path of an image, or NAME=file:PATH, NAME=qcow2:PATH or NAME=mem:SIZE", a, err)
		}
		if !fi.IsDir() {
			kind, err := nbd.KindOf(a, format)
			if err != nil {
				return nbd.ExportSpec{}, err
			}
			if name == "" {
				name = filepath.Base(a)
			}
			return nbd.ExportSpec{Name: name, Kind: kind, Path: a}, nil
		}
	}
	return nbd.ParseExportSpec(a)
}

// forkedEnv marks the background copy --fork starts: once it listens it
// lets go of the caller's output, as a daemon does.
const forkedEnv = "NBDLAB_SERVE_FORKED"

// detachOutput points standard output at /dev/null and standard error at
// the log file, so that even a crash's trace is kept, or at /dev/null.
func detachOutput(logf *os.File) {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer null.Close()
	unix.Dup2(int(null.Fd()), 1)
	if logf != nil {
		unix.Dup2(int(logf.Fd()), 2)
	} else {
		unix.Dup2(int(null.Fd()), 2)
	}
}

// forkServe runs this serve again without --fork, in a session of its
// own, and returns once it says every listener is up, or with why it
// could not start.
func forkServe(ctx context.Context, args []string, stderr io.Writer, logLost bool) error {
	var rest []string
	for _, a := range args {
		if a != "--fork" && a != "-fork" && a != "--fork=true" && a != "-fork=true" {
			rest = append(rest, a)
		}
	}
	rp, err := ready.NewPipe()
	if err != nil {
		return fmt.Errorf("--fork: %w", err)
	}
	defer rp.Close()
	cmd := exec.Command(procfs.Exe, append([]string{"serve", "--ready-fd", "3"}, rest...)...)
	cmd.Args[0] = os.Args[0]
	cmd.ExtraFiles = []*os.File{rp.Child()}
	cmd.Stderr = stderr
	cmd.Env = append(os.Environ(), forkedEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("--fork: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := rp.Wait(wctx); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("--fork: the background server did not start: %w", err)
	}
	if logLost {
		fmt.Fprintf(stderr, "nbdlab serve: in the background as pid %d; its log is discarded (--log-file FILE keeps it, -q quiets this)\n", cmd.Process.Pid)
	}
	return cmd.Process.Release()
}

// listeners opens the --listen addresses or takes the sockets systemd
// passed (socket activation); with --inetd there are none.
func listeners(listen []string, inetd bool) ([]net.Listener, error) {
	if inetd {
		return nil, nil
	}
	activated, err := service.Activated()
	if err != nil {
		return nil, err
	}
	if len(activated) > 0 {
		if len(listen) > 0 {
			for _, l := range activated {
				l.Close()
			}
			return nil, usagef("socket activated (LISTEN_FDS): the sockets come from systemd, so --listen is not taken")
		}
		return activated, nil
	}
	if len(listen) == 0 {
		listen = []string{fmt.Sprintf("127.0.0.1:%d", nbd.DefaultPort)}
	}
	return nbd.ListenAll(listen)
}

// newLogger logs to stderr in format at the level -v and -q choose;
// under --inetd, when stderr is the client's socket, it logs nothing.
func newLogger(stderr io.Writer, format string, verbose, quiet, inetd bool) (*slog.Logger, error) {
	level := slog.LevelInfo
	switch {
	case verbose:
		level = slog.LevelDebug
	case quiet:
		level = slog.LevelWarn
	}
	if f, ok := stderr.(*os.File); ok && inetd && service.IsSocket(f) {
		stderr = io.Discard
	}
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(stderr, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", format)
}

// recorder appends each request to path as a JSON line.
func recorder(path string, log *slog.Logger) (func(nbd.Recorded), func() error, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("--record: %w", err)
	}
	var mu sync.Mutex
	var werr error // the first failed write: the record is incomplete from there
	enc := json.NewEncoder(f)
	rec := func(r nbd.Recorded) {
		mu.Lock()
		defer mu.Unlock()
		if werr != nil {
			return
		}
		if werr = enc.Encode(r); werr != nil {
			log.Error("--record: cannot write the record; it ends here, and serve will exit 1", "file", path, "err", werr)
		}
	}
	finish := func() error {
		mu.Lock()
		defer mu.Unlock()
		cerr := f.Close()
		switch {
		case werr != nil:
			return fmt.Errorf("--record %s: the record is incomplete: %w", path, werr)
		case cerr != nil:
			return fmt.Errorf("--record %s: %w", path, cerr)
		}
		return nil
	}
	return rec, finish, nil
}
