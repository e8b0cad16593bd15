package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/internal/command"
	"github.com/nbdlab/nbdlab/internal/procfs"
	"github.com/nbdlab/nbdlab/labnet"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/kernel"
	"github.com/nbdlab/nbdlab/servers"
	"github.com/nbdlab/nbdlab/vm"
)

// KernelOptions configure RunKernel.
type KernelOptions struct {
	Kernel  string   // for the VM; default the newest installed
	Servers []string // servers.TCP names; default all
	Conns   []int    // connections per device; default 1 and 4
	Time    time.Duration
	Rounds  int
	// TargetCI, when set, runs more rounds after Rounds, up to MaxRounds
	// (default three times Rounds), until every figure's 95% interval is
	// within ±TargetCI of its median (0.1: ±10%); the run says which
	// never got there.
	TargetCI  float64
	MaxRounds int
	Quick     bool
	Host      bool // run on this kernel (needs nbd); what the VM runs
	// HostClock times a TCG guest by the host's clock, not by the
	// instructions it executes (vm.Config.InstructionClock).
	HostClock bool
	JSON      string // with Host: write the figures here only
	Dir       string
	Nbdlab    string
	Out       io.Writer
}

// KernelJobs are the fio jobs run on /dev/nbdN, writes before the reads
// of the same size so that the reads find data.
func KernelJobs() []Job {
	return []Job{
		{"4k randwrite QD1", "randwrite", "4k", 1},
		{"4k randwrite QD16", "randwrite", "4k", 16},
		{"4k randread QD1", "randread", "4k", 1},
		{"4k randread QD16", "randread", "4k", 16},
		{"1M write QD4", "write", "1M", 4},
		{"1M read QD4", "read", "1M", 4},
	}
}

// kernelExport is the size of the export every server offers.
const kernelExport = 256 << 20

func (o *KernelOptions) defaults() error {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Quick {
		if len(o.Servers) == 0 {
			o.Servers = []string{"nbdlab-file", "nbdkit-file"}
		}
		if len(o.Conns) == 0 {
			o.Conns = []int{1}
		}
		if o.Time == 0 {
			o.Time = time.Second
		}
		o.Rounds = orInt(o.Rounds, 1)
	}
	if len(o.Servers) == 0 {
		for _, s := range servers.TCP() {
			o.Servers = append(o.Servers, s.Name)
		}
	}
	for _, s := range o.Servers {
		if _, err := servers.Find(s); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	if len(o.Conns) == 0 {
		o.Conns = []int{1, 4}
	}
	if o.Time == 0 {
		o.Time = 3 * time.Second
	}
	// Six rounds are the fewest whose pairs give a 95% interval.
	o.Rounds = orInt(o.Rounds, 6)
	if o.TargetCI < 0 || o.TargetCI >= 1 {
		return fmt.Errorf("bench: --target-ci %g: want a fraction of the median such as 0.1 (±10%%)", o.TargetCI)
	}
	if o.TargetCI > 0 {
		o.MaxRounds = orInt(o.MaxRounds, 3*o.Rounds)
		if o.MaxRounds < o.Rounds {
			return fmt.Errorf("bench: --max-rounds %d is fewer than --rounds %d", o.MaxRounds, o.Rounds)
		}
	}
	if o.Nbdlab == "" {
		exe, err := selfExe()
		if err != nil {
			return err
		}
		o.Nbdlab = exe
	}
	return nil
}

// RunKernel runs fio on /dev/nbdN against every server, in rounds that
// run each job on every server in turn (benchRound), and writes results.json, report.md and a
// plot into o.Dir. With Host it runs on this kernel with the servers in a
// network namespace; otherwise in a VM running the same code.
func RunKernel(ctx context.Context, o KernelOptions) (*Results, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if o.Host {
		res, err := runKernelHost(ctx, o)
		return writeHost(res, err, o.JSON)
	}
	k, work, err := prepareVM(ctx, o.Kernel, o.Out, "kernel")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	out := filepath.Join(work, "kernel.json")
	argv := []string{vm.InitExe, "bench", "kernel", "--host", "--json", out,
		"--time", o.Time.String(), "--rounds", strconv.Itoa(o.Rounds)}
	if o.TargetCI > 0 {
		argv = append(argv, "--target-ci", strconv.FormatFloat(o.TargetCI, 'g', -1, 64), "--max-rounds", strconv.Itoa(o.MaxRounds))
	}
	for _, s := range o.Servers {
		argv = append(argv, "--server", s)
	}
	for _, c := range o.Conns {
		argv = append(argv, "--connections", strconv.Itoa(c))
	}
	fmt.Fprintf(o.Out, "== fio on /dev/nbdN, %s: %s\n", k.Release, strings.Join(o.Servers, ", "))
	// Every server's export at once: four 256 MiB images on tmpfs and
	// two in memory.
	vres, err := vm.Run(ctx, vm.Config{Kernel: k.Release, Init: o.Nbdlab, Memory: "3072M", Timeout: 90 * time.Minute,
		InstructionClock: !o.HostClock, Shares: []vm.Share{{Host: work}}, Stdout: o.Out, Stderr: o.Out}, argv...)
	if err != nil {
		return nil, err
	}
	res, rerr := ReadResults(out)
	if rerr != nil {
		return nil, fmt.Errorf("bench: the VM exited %d and left no results: %w", vres.ExitCode, rerr)
	}
	for i := range res.Figures {
		res.Figures[i].Accel = vres.Accel
	}
	if err := res.WriteOutputs(o.Dir); err != nil {
		return res, err
	}
	if vres.ExitCode != 0 {
		return res, fmt.Errorf("bench: the benchmark exited %d in the VM (figures so far are kept)", vres.ExitCode)
	}
	return res, nil
}

func runKernelHost(ctx context.Context, o KernelOptions) (*Results, error) {
	if err := checkTools("fio", "ip"); err != nil {
		return nil, err
	}
	if err := command.Exec(ctx, "", nil, nil, "modprobe", "nbd"); err != nil {
		return nil, fmt.Errorf("bench: this kernel has no nbd (build it with nbdlab kmod build, or run without --host): %w", err)
	}
	rel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	res := &Results{Kind: "kernel", Started: time.Now()}
	pair, err := labnet.NewPair("nbdlab-bench", 0)
	if err != nil {
		return nil, err
	}
	defer pair.Close()
	work, err := os.MkdirTemp("/dev/shm", "nbdlab-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	base := Figure{Topology: "netns", Link: "none", LinkDesc: labnet.Profile{Name: "none"}.String(),
		Kernel: strings.TrimSpace(string(rel)), CPUs: runtime.NumCPU(), Durable: true}
	last := o.Rounds
	if o.TargetCI > 0 {
		last = o.MaxRounds
	}
	for round := 1; round <= last; round++ {
		if round > o.Rounds {
			wide := wideFigures(res.Figures, o.TargetCI)
			if len(wide) == 0 {
				fmt.Fprintf(o.Out, "every interval is within ±%.0f%% after %d rounds: done\n", 100*o.TargetCI, round-1)
				break
			}
			fmt.Fprintf(o.Out, "round %d: %d intervals still wider than ±%.0f%% (%s)\n", round, len(wide), 100*o.TargetCI, wide[0])
		}
		figs, err := benchRound(ctx, o, pair, work, base, round)
		res.Figures = append(res.Figures, figs...)
		if err != nil {
			return res, err
		}
	}
	if o.TargetCI > 0 {
		if wide := wideFigures(res.Figures, o.TargetCI); len(wide) > 0 {
			fmt.Fprintf(o.Out, "after %d rounds (--max-rounds), %d intervals never got within ±%.0f%%: %s\n",
				o.MaxRounds, len(wide), 100*o.TargetCI, strings.Join(wide, "; "))
		}
	}
	return res, nil
}

// wideFigures names the figures (target and job, over their rounds) whose
// median's 95% interval is wider than ±target of the median, or that have
// too few rounds for a 90% interval.
func wideFigures(figs []Figure, target float64) []string {
	rounds := map[string][]float64{}
	var keys []string
	for _, f := range figs {
		k := f.Target + " " + f.Workload
		if _, ok := rounds[k]; !ok {
			keys = append(keys, k)
		}
		rounds[k] = append(rounds[k], f.Value)
	}
	var wide []string
	for _, k := range keys {
		iv := medianInterval(rounds[k])
		if iv.Level < minLevel || iv.Median <= 0 || (iv.Hi-iv.Lo)/2 > target*iv.Median {
			wide = append(wide, fmt.Sprintf("%s ±%.0f%%", k, 100*(iv.Hi-iv.Lo)/2/math.Max(iv.Median, 1e-9)))
		}
	}
	return wide
}

// kernelTarget is one server started for a round, and its device while
// attached.
type kernelTarget struct {
	name string
	dir  string
	p    *servers.Proc
	addr nbd.Addr
	dev  *kernel.Attachment
}

// benchRound starts every server in the namespace, each on its own port,
// and runs each job on every server's device in turn, for each
// connection count: the servers' figures for a job are seconds apart, so
// what slows the host for a minute slows them all, and their rounds
// compare pair by pair. The order of the servers turns by one each round,
// so none always runs first. Only a cancelled ctx is an error: a server
// that does not start or attach is reported and left out of the round.
func benchRound(ctx context.Context, o KernelOptions, pair *labnet.Pair, work string, base Figure, round int) ([]Figure, error) {
	var ts []*kernelTarget
	defer func() {
		for _, t := range ts {
			t.p.Stop(10 * time.Second)
			os.RemoveAll(t.dir)
		}
	}()
	n := len(o.Servers)
	for i := range n {
		name := o.Servers[(i+round-1)%n]
		t, err := startKernelTarget(ctx, o, pair, work, name, 10809+i)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			fmt.Fprintf(o.Out, "round %d %s: not measured: %v\n", round, name, err)
			continue
		}
		ts = append(ts, t)
	}
	var figs []Figure
	for _, conns := range o.Conns {
		var up []*kernelTarget
		for _, t := range ts {
			a, err := kernel.Attach(ctx, t.addr.DialConn, kernel.AttachOptions{Device: "any", Connections: conns,
				Timeout: time.Minute, Client: nbd.ClientConfig{Export: "d"}})
			if err != nil {
				if ctx.Err() != nil {
					return figs, ctx.Err()
				}
				fmt.Fprintf(o.Out, "round %d %s, %d connections: not measured: %v\n", round, t.name, conns, err)
				continue
			}
			t.dev = a
			up = append(up, t)
		}
		for _, job := range KernelJobs() {
			for _, t := range up {
				figs = append(figs, runKernelJob(ctx, o, work, t, job, conns, base, round))
			}
		}
		for _, t := range up {
			if err := kernel.Disconnect(t.dev.Index); err != nil {
				fmt.Fprintf(o.Out, "round %d %s: disconnect %s: %v\n", round, t.name, t.dev.Path, err)
			}
			t.dev = nil
		}
		if ctx.Err() != nil {
			return figs, ctx.Err()
		}
	}
	return figs, nil
}

// startKernelTarget starts server name in the namespace on port, serving
// a filled image of its own (or memory).
func startKernelTarget(ctx context.Context, o KernelOptions, pair *labnet.Pair, work, name string, port int) (*kernelTarget, error) {
	spec, _ := servers.Find(name)
	dir := filepath.Join(work, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	img := filepath.Join(dir, "disk.img")
	args := servers.Args{Nbdlab: o.Nbdlab, Dir: dir, IP: pair.ServerIP.String(), Port: port, Img: img, Size: kernelExport}
	sargv, err := spec.Argv(args)
	if err == nil && !spec.Memory {
		// Only a server that serves the image gets one: every server's
		// at once would not fit /dev/shm (half the VM's memory).
		err = fillImage(img, kernelExport)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	argv := append([]string{"netns", "exec", pair.Name}, sargv...)
	addr := nbd.Addr{Network: "tcp", Address: net.JoinHostPort(args.IP, strconv.Itoa(port))}
	p, err := servers.StartListening(ctx, addr, time.Minute, "ip", argv...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &kernelTarget{name: name, dir: dir, p: p, addr: addr}, nil
}

// runKernelJob runs one fio job on t's device and returns its figure,
// with the server's CPU time and switches over it and the requests the
// device completed.
func runKernelJob(ctx context.Context, o KernelOptions, work string, t *kernelTarget, job Job, conns int, base Figure, round int) Figure {
	spec, _ := servers.Find(t.name)
	f := base
	f.Target, f.Server, f.Round = t.name, spec.What, round
	f.Workload = fmt.Sprintf("%s, %d conn", job.Name, conns)
	f.Export = fmt.Sprintf("%s, %d connection(s)", t.dev.Path, t.dev.Connections)
	f.Unit = "IOPS"
	if job.BS == "1M" {
		f.Unit = "MiB/s"
	}
	u0, sw0 := serverUsage(t.p, t.dir)
	dev := strings.TrimPrefix(t.dev.Path, "/dev/")
	d0, _ := readDiskStat(dev)
	start := time.Now()
	r, err := fioJSON(ctx, filepath.Join(work, "fio.json"), []string{"--name=" + job.RW, "--filename=" + t.dev.Path,
		"--rw=" + job.RW, "--bs=" + job.BS, "--iodepth=" + strconv.Itoa(job.Depth), "--ioengine=libaio", "--direct=1",
		"--time_based=1", "--runtime=" + strconv.Itoa(int(o.Time.Seconds())), "--ramp_time=1", "--size=" + strconv.Itoa(kernelExport)})
	u1, sw1 := serverUsage(t.p, t.dir)
	f.Wall = time.Since(start).Seconds()
	// Each difference is negative where a process counted at the start
	// (nbd-server's child of the last device) has exited since: then it
	// was not measured, and stays 0.
	if cpu, user := (u1.CPU - u0.CPU).Seconds(), (u1.User - u0.User).Seconds(); cpu >= 0 && user >= 0 {
		f.ServerCPU, f.ServerUserCPU = cpu, user
	}
	if v, i := sw1.Voluntary-sw0.Voluntary, sw1.Involuntary-sw0.Involuntary; v >= 0 && i >= 0 {
		f.ServerVoluntary, f.ServerInvoluntary = v, i
	}
	if d1, err := readDiskStat(dev); err == nil {
		d := d1.sub(d0)
		f.DevRequests = d.reads + d.writes + d.discards + d.flushes
	}
	if err != nil {
		f.Error = err.Error()
		fmt.Fprintf(o.Out, "round %d %s %s: ERROR %v\n", round, t.name, f.Workload, err)
		return f
	}
	f.Value = r.IOPS
	if f.Unit == "MiB/s" {
		f.Value = r.MiBps()
	}
	n := float64(max(f.DevRequests, 1))
	fmt.Fprintf(o.Out, "round %d %-13s %-26s %8.1f %s (server CPU %.2fs, %.0f µs (%.0f in user space) and %.2f+%.2f switches a request)\n", round, t.name, f.Workload, f.Value, f.Unit, f.ServerCPU,
		f.ServerCPU*1e6/n, f.ServerUserCPU*1e6/n, float64(f.ServerVoluntary)/n, float64(f.ServerInvoluntary)/n)
	return f
}

// serverUsage is the CPU time (in all, and in user space) and the
// context switches of the server's process tree under p (ip netns exec
// has exec'd the server), and under the daemon whose pid file is in dir
// (nbd-server detaches from the shell that holds its place).
func serverUsage(p *servers.Proc, dir string) (procfs.Stat, procfs.Switches) {
	var sum procfs.Stat
	var sw procfs.Switches
	pids := []int{p.Cmd.Process.Pid}
	if b, err := os.ReadFile(filepath.Join(dir, "nbd-server.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			pids = append(pids, pid)
		}
	}
	for len(pids) > 0 {
		pid := pids[0]
		pids = pids[1:]
		if st, err := procfs.ReadStat(pid); err == nil {
			sum.CPU += st.CPU
			sum.User += st.User
		}
		if s, err := procfs.ReadSwitches(pid); err == nil {
			sw.Voluntary += s.Voluntary
			sw.Involuntary += s.Involuntary
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				pids = append(pids, c)
			}
		}
	}
	return sum, sw
}

// fillImage writes size bytes of non-zero data, so that reads move data
// and no server can answer them from a hole.
func fillImage(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*13 + 7)
	}
	for n := int64(0); n < size; n += int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// WriteKernelReport writes the kernel benchmark as Markdown: a table per
// job of every server's median and range, and nbdlab's best against the
// best peer's.
func (r *Results) WriteKernelReport(w io.Writer) error {
	t := r.table()
	var b strings.Builder
	b.WriteString("# fio through /dev/nbdN\n\n")
	if len(r.Figures) > 0 {
		f := r.Figures[0]
		fmt.Fprintf(&b, "Started %s. Kernel %s, %d CPUs, %s; each server in a network namespace over a veth pair; fio libaio, O_DIRECT, on the whole device. "+
			"Median of the rounds (its 95%% confidence interval in brackets: from order statistics, the whole range for up to 8 rounds). "+
			"Each round runs every job on every server's device in turn, the servers' order turning by one each round, so a round's figures for a job are seconds apart. "+
			"**nbdlab / best peer** is nbdlab's better server against the best of the others, from the ratios of their rounds pair by pair: the Hodges-Lehmann estimate, with its 95%% interval from the Wilcoxon signed-rank test: "+
			"*faster* or *slower* where the interval excludes 1.00, *within noise* where it does not, *too few rounds* under 6 pairs. "+
			"**server CPU µs/request** is the CPU time of each server's process over the job's requests.\n\n",
			r.Started.UTC().Format("2006-01-02 15:04 UTC"), f.Kernel, f.CPUs, orUnknown(f.Accel))
		b.WriteString(clockNote(f.Accel, "IOPS, MiB/s and CPU times", "the server, the kernel and fio", "each server"))
	}
	for _, s := range t.setups {
		t.writeFigures(&b, s, "job", func(tg string) string { return tg }, []string{"nbdlab / best peer"}, func(wl string) []string {
			if ours, peer, ok := nbdlabAgainstPeers(t, s, wl); ok {
				return []string{t.compare(ours, peer, true).String()}
			}
			return []string{"-"}
		})
		writeCPUPerRequest(&b, t, s)
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeCPUPerRequest writes each server's CPU time and context switches
// per request the device completed, the medians of the rounds: under
// emulation they are steadier than throughput.
func writeCPUPerRequest(b *strings.Builder, t *table, s setup) {
	writePerRequest(b, t, s, "Server CPU µs per request (median of the rounds)", "%.0f",
		func(c *cell) []float64 { return scaled(c.perRequest, 1e6) })
	writePerRequest(b, t, s, "Of that, µs in user space (median of the rounds; the rest is the kernel's, in the server's system calls)", "%.0f",
		func(c *cell) []float64 { return scaled(c.userPerRequest, 1e6) })
	writePerRequest(b, t, s, "Server context switches per request, voluntary and involuntary, over the threads alive at the end of each job (median of the rounds)", "%.2f",
		func(c *cell) []float64 { return c.switches })
}

func scaled(v []float64, k float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = x * k
	}
	return out
}

// writePerRequest writes a table of one per-request median per job and
// server.
func writePerRequest(b *strings.Builder, t *table, s setup, title, format string, values func(*cell) []float64) {
	fmt.Fprintf(b, "\n%s:\n\n| job |", title)
	for _, tg := range t.targets {
		fmt.Fprintf(b, " %s |", tg)
	}
	b.WriteString("\n|---|")
	for range t.targets {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, wl := range t.workloads {
		fmt.Fprintf(b, "| %s |", wl)
		for _, tg := range t.targets {
			if c := t.cell(s, wl, tg); c != nil && len(values(c)) > 0 {
				fmt.Fprintf(b, " "+format+" |", medianOf(values(c)))
			} else {
				b.WriteString(" - |")
			}
		}
		b.WriteString("\n")
	}
}

// nbdlabAgainstPeers returns the cells of nbdlab's better server and of
// the best peer on workload wl, by median (higher is better for every
// kernel job).
func nbdlabAgainstPeers(t *table, s setup, wl string) (ours, peer *cell, ok bool) {
	var bestOurs, bestPeer float64
	for _, tg := range t.targets {
		c := t.cell(s, wl, tg)
		if c == nil || len(c.vals) == 0 {
			continue
		}
		v := medianOf(c.vals)
		if strings.HasPrefix(tg, "nbdlab") {
			if v > bestOurs {
				bestOurs, ours = v, c
			}
		} else if v > bestPeer {
			bestPeer, peer = v, c
		}
	}
	return ours, peer, ours != nil && peer != nil
}
