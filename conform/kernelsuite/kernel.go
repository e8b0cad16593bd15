package kernelsuite

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/conform/report"
	"github.com/nbdlab/nbdlab/internal/command"
	"github.com/nbdlab/nbdlab/kernels"
	"github.com/nbdlab/nbdlab/labnet"
	"github.com/nbdlab/nbdlab/nbd/kernel"
	"github.com/nbdlab/nbdlab/vm"
)

// Options configure Run.
type Options struct {
	Kernels []string // what kernels.Find takes; default every kernel installed or fetched
	Servers []string // Servers names; default all
	Host    bool     // run on this machine's kernel instead of in VMs
	Guest   bool     // with Host: this is a lab VM the suite may break (rmmod nbd)
	Run     string   // regular expression: only the cases whose ID matches
	Strict  bool     // a peer server's failure fails the run too
	// Repeat runs each selected case this many times against each server
	// (default once); a case that failed in some rounds is "flaky k/N",
	// and a flaky case fails the run as a failed one does. UntilFail
	// stops repeating after the first round in which a case failed.
	Repeat    int
	UntilFail bool
	// StressCPU, when set, runs stress-ng --cpu StressCPU on this machine
	// for as long as the suite runs (bounded by Timeout per kernel), so
	// that the cases meet the scheduling delays of a loaded host.
	StressCPU int
	// EveryServer runs the cases of the kernel's own behaviour with every
	// server, not only with the reference (nbdlab-file where selected).
	EveryServer bool
	// NoUdev boots the suite's VMs without systemd-udevd (vm.Config):
	// the cases then meet a bare system, not the udev races users do.
	NoUdev  bool
	Nbdlab  string // the nbdlab binary the servers run; default this executable
	Out     io.Writer
	Timeout time.Duration // per kernel in a VM; default 20m
}

// Result is a run of the kernel suite: the report, and whether it
// passed (every case with nbdlab's servers; with Strict, with all).
type Result struct {
	Report *report.Report
	Passed bool
}

func (o *Options) defaults() error {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Repeat < 0 {
		return fmt.Errorf("conform: --repeat %d: want a count of rounds, 1 or more", o.Repeat)
	}
	if o.UntilFail && o.Repeat == 0 {
		o.Repeat = 100
	}
	if o.Timeout == 0 {
		o.Timeout = 20 * time.Minute * time.Duration(max(1, (o.Repeat+4)/5))
	}
	if o.Nbdlab == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		o.Nbdlab = exe
		if _, err := os.Stat(exe); err != nil {
			// In a lab VM the path is the initramfs's; the kernel's link
			// to this process's executable works from any process.
			o.Nbdlab = fmt.Sprintf("/proc/%d/exe", os.Getpid())
		}
	}
	known := map[string]bool{}
	var names []string
	for _, s := range Servers() {
		known[s.Name] = true
		names = append(names, s.Name)
	}
	for _, s := range o.Servers {
		if !known[s] {
			return fmt.Errorf("conform: unknown server %q; the kernel suite has %s", s, strings.Join(names, ", "))
		}
	}
	run, err := matchCases(o.Run)
	if err != nil {
		return err
	}
	o.Run = run
	return nil
}

// matchCases checks that the --run expression selects some kernel case and
// returns it; blktests' names (nbd/001) stand for the cases they became
// (nbd001-size/netlink and /ioctl).
func matchCases(run string) (string, error) {
	any := func(expr string) (bool, error) {
		re, err := regexp.Compile(expr)
		if err != nil {
			return false, fmt.Errorf("conform: --run %q: %w", expr, err)
		}
		for _, c := range kernelCases() {
			if re.MatchString(c.id) {
				return true, nil
			}
		}
		return false, nil
	}
	ok, err := any(run)
	if err != nil || ok {
		return run, err
	}
	if alt := blktestsName.ReplaceAllString(run, "nbd$1"); alt != run {
		if ok, _ := any(alt); ok {
			return alt, nil
		}
	}
	return "", fmt.Errorf("conform: --run %q matches no case (IDs look like nbd001-size/netlink; nbdlab conform --list shows them all)", run)
}

var blktestsName = regexp.MustCompile(`nbd/(\d{3})`)

// Run runs the kernel suite: on this machine's kernel with Host, or
// else in one VM per kernel, each running this same code with --host.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if o.StressCPU > 0 {
		stop, err := stress(ctx, o)
		if err != nil {
			return nil, err
		}
		defer stop()
	}
	var rep *report.Report
	var err error
	if o.Host {
		rep, err = runHost(ctx, o)
	} else {
		rep, err = runVMs(ctx, o)
	}
	if err != nil {
		return nil, err
	}
	return &Result{Report: rep, Passed: passed(rep, o.Strict)}, nil
}

// stress starts stress-ng beside the suite, bounded in time, and
// returns what stops it.
func stress(ctx context.Context, o Options) (func(), error) {
	if err := command.Require("stress-ng"); err != nil {
		return nil, fmt.Errorf("conform: --stress-cpu: %w", err)
	}
	bound := o.Timeout * time.Duration(max(1, len(o.Kernels)))
	if !o.Host && len(o.Kernels) == 0 {
		bound = o.Timeout * 4 // every kernel: the matrix has four
	}
	cctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(cctx, "stress-ng", "--cpu", strconv.Itoa(o.StressCPU), "--timeout", strconv.Itoa(int(bound.Seconds()))+"s", "--quiet")
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("conform: stress-ng: %w", err)
	}
	fmt.Fprintf(o.Out, "== stress-ng --cpu %d beside the suite (at most %s)\n", o.StressCPU, bound)
	return func() {
		cancel()
		cmd.Wait()
	}, nil
}

// passed reports whether every one of nbdlab's servers (with strict,
// every server) started and no case failed with it, in any round.
func passed(r *report.Report, strict bool) bool {
	for _, t := range r.Targets {
		if !strict && !strings.Contains(t.Name, "nbdlab") {
			continue
		}
		if t.Error != "" {
			return false
		}
		for _, res := range t.Results {
			if res.Status == report.Fail || res.Status == report.Flaky {
				return false
			}
		}
	}
	return true
}

func (o Options) servers() []Server {
	all := Servers()
	if len(o.Servers) == 0 {
		return all
	}
	var out []Server
	for _, s := range all {
		for _, want := range o.Servers {
			if s.Name == want {
				out = append(out, s)
			}
		}
	}
	return out
}

// runVMs boots each kernel once and runs the suite in it with --host; the
// guest writes its report into a shared directory.
func runVMs(ctx context.Context, o Options) (*report.Report, error) {
	var ks []kernels.Kernel
	if len(o.Kernels) == 0 {
		all, err := kernels.All(kernels.Store{})
		if err != nil {
			return nil, err
		}
		if len(all) == 0 {
			return nil, errors.New("conform: no kernel installed or fetched (nbdlab kernel fetch debian:SUITE)")
		}
		ks = all
	}
	for _, spec := range o.Kernels {
		k, err := kernels.Find(spec, "", kernels.Store{})
		if err != nil {
			return nil, err
		}
		ks = append(ks, k)
	}
	share, err := os.MkdirTemp("", "nbdlab-conform-kernel-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(share)
	merged := &report.Report{Kind: "kernel"}
	for _, k := range ks {
		out := filepath.Join(share, k.Release+".json")
		argv := []string{vm.InitExe, "conform", "--host", "--guest", "--json", out}
		for _, s := range o.Servers {
			argv = append(argv, "--server", s)
		}
		if o.Run != "" {
			argv = append(argv, "--run", o.Run)
		}
		if o.EveryServer {
			argv = append(argv, "--every-server")
		}
		if o.Repeat > 1 {
			argv = append(argv, "--repeat", strconv.Itoa(o.Repeat))
		}
		if o.UntilFail {
			argv = append(argv, "--until-fail")
		}
		fmt.Fprintf(o.Out, "== %s (%s): booting a VM for the suite\n", k.Release, k.Origin)
		start := time.Now()
		res, err := vm.Run(ctx, vm.Config{Kernel: k.Release, Init: o.Nbdlab, Memory: "1536M", Timeout: o.Timeout,
			NoUdev: o.NoUdev, Shares: []vm.Share{{Host: share}}, Stdout: o.Out, Stderr: o.Out}, argv...)
		if err != nil {
			return nil, fmt.Errorf("conform: kernel %s: %w", k.Release, err)
		}
		rep, err := report.Read(out)
		if err != nil {
			return nil, fmt.Errorf("conform: kernel %s: the guest suite exited %d and left no report: %w", k.Release, res.ExitCode, err)
		}
		fmt.Fprintf(o.Out, "== %s: done in %s\n", k.Release, time.Since(start).Round(time.Second))
		merged.Merge(rep)
	}
	return merged, nil
}

// RunReports runs the suite, prints the matrix, writes the reports
// into dir and fails unless the run passed.
func RunReports(ctx context.Context, o Options, dir string) error {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	res, err := Run(ctx, o)
	if err != nil {
		return err
	}
	if err := res.Report.WriteMatrix(o.Out); err != nil {
		return err
	}
	if err := res.Report.WriteFiles(dir); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "reports: %s\n", strings.Join([]string{filepath.Join(dir, "report.json"), filepath.Join(dir, "report.md"), filepath.Join(dir, "junit.xml")}, ", "))
	if !res.Passed {
		return errors.New("conform: a case failed with nbdlab's server")
	}
	return nil
}

// runHost runs every case against every server on this machine's kernel,
// each server in a network namespace of its own.
func runHost(ctx context.Context, o Options) (*report.Report, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("conform: the kernel suite needs root (network namespaces, /dev/nbd*)")
	}
	if err := command.Require("ip"); err != nil {
		return nil, fmt.Errorf("conform: %w", err)
	}
	if err := loadNBD(ctx); err != nil {
		return nil, err
	}
	release := runningRelease()
	run := regexp.MustCompile(o.Run)
	cases := kernelCases()
	rep := &report.Report{Kind: "kernel"}
	for _, c := range cases {
		if run.MatchString(c.id) {
			rep.Checks = append(rep.Checks, report.CheckInfo{ID: c.id, Level: report.Must, What: c.what})
		}
	}
	work, err := os.MkdirTemp("", "nbdlab-conform-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	servers := o.servers()
	ref := reference(servers)
	var selected []kernelCase
	for _, c := range cases {
		if run.MatchString(c.id) {
			selected = append(selected, c)
		}
	}
	for _, spec := range servers {
		start := func() (*runningServer, error) { return startKernelServer(ctx, spec, o.Nbdlab, work) }
		runOne := func(c kernelCase, srv *runningServer) report.Result { return runCase(ctx, c, srv, o, release) }
		t := runTarget(o, release, spec, ref, selected, start, runOne)
		rep.Targets = append(rep.Targets, t)
	}
	return rep, nil
}

// reference is the server the cases of the kernel's own behaviour run
// with: nbdlab-file where selected, else the first nbdlab server, else the
// first.
func reference(servers []Server) string {
	ref := ""
	for _, s := range servers {
		switch {
		case s.Name == "nbdlab-file":
			return s.Name
		case ref == "" && strings.HasPrefix(s.Name, "nbdlab"):
			ref = s.Name
		}
	}
	if ref == "" && len(servers) > 0 {
		ref = servers[0].Name
	}
	return ref
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 100 {
		s = s[:100] + "..."
	}
	return s
}

func runningRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// loadNBD loads nbd with enough devices and partitions, unless it is
// there already.
func loadNBD(ctx context.Context) error {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		return nil
	}
	out, err := exec.CommandContext(ctx, "modprobe", "nbd", "nbds_max=16", "max_part=8").CombinedOutput()
	if err != nil {
		if perr := kernel.Present(); perr != nil {
			return fmt.Errorf("conform: --host: %w (without --host the suite runs in lab VMs)", perr)
		}
		return fmt.Errorf("conform: modprobe nbd: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// startKernelServer makes the server's namespace and backing file and
// starts it.
func startKernelServer(ctx context.Context, spec Server, bin, work string) (*runningServer, error) {
	dir := filepath.Join(work, spec.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		return nil, err
	}
	if err := os.Truncate(img, kernelExportSize); err != nil {
		return nil, err
	}
	n, err := labnet.NewPair("nbdlab-conform", 0)
	if err != nil {
		return nil, err
	}
	s := &runningServer{spec: spec, net: n, dir: dir, img: img, nbdlab: bin, ctx: ctx}
	if err := s.start(); err != nil {
		n.Close()
		return nil, err
	}
	return s, nil
}

func (s *runningServer) close() {
	s.stop()
	if s.net != nil {
		s.net.Close()
	}
}

// kernelLog returns the kernel log, or "" where it cannot be read.
func kernelLog() string {
	out, _ := exec.Command("dmesg").Output()
	return string(out)
}

// nbdLogLines bounds the kernel log lines a failed case's detail quotes.
const nbdLogLines = 12

// nbdLogTail returns the last n lines of log that name an nbd device,
// indented: what the kernel said about the devices while a case ran.
func nbdLogTail(log string, n int) string {
	var lines []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "nbd") {
			lines = append(lines, "  "+strings.TrimSpace(l))
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

var oops = regexp.MustCompile(`(?m)^.*(BUG:|WARNING:|Oops|general protection fault|Call Trace:|hung_task|blocked for more than).*$`)

// runCase runs one case with a deadline, restarts the server if the case
// left it stopped, and fails the case on anything alarming in the kernel
// log.
func runCase(ctx context.Context, c kernelCase, srv *runningServer, o Options, release string) report.Result {
	res := report.Result{ID: c.id, Level: report.Must}
	start := time.Now()
	before := kernelLog()
	cctx, cancel := context.WithTimeout(ctx, c.limit())
	defer cancel()
	e := &kenv{ctx: cctx, srv: srv, guest: o.Guest}
	err := c.run(e)
	res.Took = time.Since(start)
	var na notApplicable
	switch {
	case errors.As(err, &na):
		res.Status, res.Detail = report.NA, string(na)
	case err != nil:
		res.Status, res.Detail = report.Fail, err.Error()
	default:
		res.Status = report.Pass
	}
	if after := kernelLog(); len(after) >= len(before) {
		caseLog := after[len(before):]
		if m := oops.FindString(caseLog); m != "" && res.Status != report.NA {
			res.Status = report.Fail
			res.Detail = strings.TrimSpace(res.Detail + "\nkernel log: " + strings.TrimSpace(m))
		}
		if res.Status == report.Fail {
			if lines := nbdLogTail(caseLog, nbdLogLines); lines != "" {
				res.Detail += "\nthe case's last nbd lines in the kernel log:\n" + lines
			}
		}
	}
	e.cleanup()
	if srv.proc == nil || isDone(srv.proc.Done()) {
		srv.stop()
		if err := srv.start(); err != nil && res.Status == report.Pass {
			res.Status, res.Detail = report.Fail, "the server did not restart after the case: "+err.Error()
		}
	}
	if res.Status == report.Fail {
		res.Detail += fmt.Sprintf("\nreproduce: nbdlab conform --kernel %s --server %s --run '^%s$'", release, srv.spec.Name, regexp.QuoteMeta(c.id))
	}
	return res
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
