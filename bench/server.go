package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/nbdlab/nbdlab/internal/command"
	"github.com/nbdlab/nbdlab/internal/procfs"
	"github.com/nbdlab/nbdlab/internal/selfbuild"
	"github.com/nbdlab/nbdlab/servers"
)

// Options configure RunServer. Zero values mean defaults.
type Options struct {
	Nbdlab   string        // nbdlab binary; built from this tree if empty
	Dir      string        // tmpfs directory for file exports; default /dev/shm
	Size     int64         // export size; default 1 GiB
	Duration time.Duration // per fio job; default BENCH_TIME or 3 s
	Rounds   int           // runs of every job on every server; default BENCH_ROUNDS or 5 (the fewest a verdict rests on)
	Out      io.Writer     // report; default os.Stdout
}

// envInt reads a positive whole number from the environment.
func envInt(name string, def int) (int, error) {
	s := os.Getenv(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("bench: %s=%q: want a whole number above 0", name, s)
	}
	return n, nil
}

func (o *Options) defaults(ctx context.Context) error {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Size == 0 {
		o.Size = 1 << 30
	}
	if o.Duration == 0 {
		n, err := envInt("BENCH_TIME", 3)
		if err != nil {
			return err
		}
		o.Duration = time.Duration(n) * time.Second
	}
	if o.Rounds == 0 {
		var err error
		if o.Rounds, err = envInt("BENCH_ROUNDS", 5); err != nil {
			return err
		}
	}
	if o.Dir == "" {
		o.Dir = "/dev/shm"
	}
	if err := command.Require("fio", "nbdkit", "qemu-nbd", "qemu-img"); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if o.Nbdlab == "" {
		var err error
		if o.Nbdlab, err = selfbuild.Nbdlab(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Target is one server under test.
type Target struct {
	Name  string
	Peer  bool
	Group string // "mem", "file" or "qcow2": which peers it is compared with
	args  func(sock, img string, size int64) []string
}

// qcow2Image is the qcow2 copy of the benchmark's raw image, which the
// qcow2 targets serve.
func qcow2Image(img string) string { return img + ".qcow2" }

// ServerTargets returns nbdlab's exports and the peers'.
func ServerTargets() []Target {
	return []Target{
		{"nbdlab mem", false, "mem", func(sock, _ string, size int64) []string {
			return []string{"nbdlab", "serve", "--listen", "unix:" + sock, fmt.Sprintf("bench=mem:%d", size)}
		}},
		{"nbdlab file", false, "file", func(sock, img string, _ int64) []string {
			return []string{"nbdlab", "serve", "--listen", "unix:" + sock, "bench=file:" + img}
		}},
		{"nbdkit memory", true, "mem", func(sock, _ string, size int64) []string {
			return []string{"nbdkit", "-f", "-U", sock, "memory", strconv.FormatInt(size, 10)}
		}},
		{"nbdkit file", true, "file", func(sock, img string, _ int64) []string {
			return []string{"nbdkit", "-f", "-U", sock, "file", "file=" + img}
		}},
		{"qemu-nbd raw", true, "file", func(sock, img string, _ int64) []string {
			return []string{"qemu-nbd", "-t", "-f", "raw", "-k", sock, img}
		}},
		{"nbdlab qcow2", false, "qcow2", func(sock, img string, _ int64) []string {
			return []string{"nbdlab", "serve", "--listen", "unix:" + sock, "bench=qcow2:" + qcow2Image(img)}
		}},
		{"qemu-nbd qcow2", true, "qcow2", func(sock, img string, _ int64) []string {
			return []string{"qemu-nbd", "-t", "-f", "qcow2", "-k", sock, qcow2Image(img)}
		}},
	}
}

// startTarget starts a server and returns once it listens on sock.
func startTarget(ctx context.Context, nbdlab string, argv []string, sock string) (*servers.Proc, error) {
	p, err := servers.StartOn(ctx, sock, nbdlab, argv...)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	return p, nil
}

// measure runs one job against a started server and adds its CPU and RSS.
func measure(ctx context.Context, dir, uri string, p *servers.Proc, job Job, size int64, d time.Duration) (Result, error) {
	pid := p.Cmd.Process.Pid
	st0, err := procfs.ReadStat(pid)
	if err != nil {
		return Result{}, err
	}
	start := time.Now()
	r, err := RunFio(ctx, dir, uri, job, size, d)
	if err != nil {
		return r, err
	}
	r.Duration = time.Since(start)
	st1, err := procfs.ReadStat(pid)
	if err != nil {
		return r, err
	}
	r.CPU = st1.CPU - st0.CPU
	r.PeakRSS, err = procfs.PeakRSS(pid)
	return r, err
}

// RunServer runs every job against every target, Rounds times, and prints
// a report of the median run of each with the ratio of nbdlab to the best
// peer per job, then the peak RSS of nbdlab under load on a 100 GiB sparse
// export. The rounds interleave the servers, each round in another order,
// so that a noisy moment on the machine hits one run, not one server.
func RunServer(ctx context.Context, o Options) error {
	if err := o.defaults(ctx); err != nil {
		return err
	}
	work, err := os.MkdirTemp(o.Dir, "nbdlab-bench-")
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(work)
	img := filepath.Join(work, "disk.img")
	if err := fillFile(img, o.Size); err != nil {
		return err
	}
	// Every cluster allocated: writes overwrite, reads read data.
	if err := command.Exec(ctx, "", nil, nil, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", img, qcow2Image(img)); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	jobs, targets := ServerJobs(), ServerTargets()
	fmt.Fprintf(o.Out, "bench:server: %d jobs x %d servers x %d rounds, %s each, %d MiB exports, file exports on %s\n",
		len(jobs), len(targets), o.Rounds, o.Duration, o.Size>>20, o.Dir)
	runs := map[string]map[string][]Result{} // job -> target -> one result a round
	for _, j := range jobs {
		runs[j.Name] = map[string][]Result{}
	}
	for round := range o.Rounds {
		fmt.Fprintf(o.Out, "round %d of %d\n", round+1, o.Rounds)
		for k := range targets {
			t := targets[(k+round)%len(targets)]
			if err := runTarget(ctx, o, work, img, t, runs); err != nil {
				return err
			}
		}
	}
	report(o.Out, runs)
	return rssUnderLoad(ctx, o, work)
}

// runTarget starts one server, runs every job against it and stops it.
func runTarget(ctx context.Context, o Options, work, img string, t Target, runs map[string]map[string][]Result) error {
	sock := filepath.Join(work, "nbd.sock")
	defer os.Remove(sock)
	p, err := startTarget(ctx, o.Nbdlab, t.args(sock, img, o.Size), sock)
	if err != nil {
		return err
	}
	uri := "nbd+unix:///?socket=" + sock
	if !t.Peer {
		uri = "nbd+unix:///bench?socket=" + sock
	}
	for _, j := range ServerJobs() {
		r, err := measure(ctx, work, uri, p, j, o.Size, o.Duration)
		if err != nil {
			p.Kill()
			return err
		}
		runs[j.Name][t.Name] = append(runs[j.Name][t.Name], r)
		fmt.Fprintf(o.Out, "  %-18s %-14s %9.0f IOPS %8.1f MiB/s\n", j.Name, t.Name, r.IOPS, r.MiBps())
	}
	if err := p.Stop(30 * time.Second); err != nil {
		return fmt.Errorf("bench: stop %s: %w", t.Name, err)
	}
	return nil
}

// median returns the run with the median IOPS (the upper one of an even
// count) and the lowest and highest IOPS of all.
func median(rs []Result) (mid Result, lo, hi float64) {
	if len(rs) == 0 {
		return Result{}, 0, 0
	}
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b Result) int { return cmp.Compare(a.IOPS, b.IOPS) })
	return s[len(s)/2], s[0].IOPS, s[len(s)-1].IOPS
}

// fillFile writes size bytes of non-zero data, so reads hit real pages.
func fillFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.WriteAt(buf[:min(int64(len(buf)), size-off)], off); err != nil {
			return fmt.Errorf("bench: fill %s: %w", path, err)
		}
	}
	return nil
}

func report(w io.Writer, runs map[string]map[string][]Result) {
	jobs, targets := ServerJobs(), ServerTargets()
	results := map[string]map[string]Result{}
	fmt.Fprintln(w, "\nmedian of the rounds (the run with the median IOPS); the interval is the median's, 95% (or the coverage its rounds allow):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "job\tserver\tIOPS\tIOPS interval\tMiB/s\tp99\tCPU s/GiB\tpeak RSS MiB\t")
	for _, j := range jobs {
		results[j.Name] = map[string]Result{}
		for _, t := range targets {
			r, _, _ := median(runs[j.Name][t.Name])
			results[j.Name][t.Name] = r
			var xs []float64
			for _, x := range runs[j.Name][t.Name] {
				xs = append(xs, x.IOPS)
			}
			iv := medianInterval(xs)
			lo, hi := iv.Lo, iv.Hi
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f-%.0f\t%.1f\t%s\t%.3f\t%d\t\n", j.Name, t.Name, r.IOPS, lo, hi, r.MiBps(),
				r.P99.Round(time.Microsecond), r.CPUPerGiB(), r.PeakRSS>>20)
		}
	}
	tw.Flush()
	fmt.Fprintln(w, "\nnbdlab / best peer (IOPS; the median of the round-to-round ratios, its 95% rank-sum interval and the verdict):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "job\tnbdlab best\tbest peer\tnbdlab / best peer\tmem vs memory peers\tfile vs file peers\tqcow2 vs qemu-nbd qcow2")
	for _, j := range jobs {
		iops := func(name string) []float64 {
			var xs []float64
			for _, r := range runs[j.Name][name] {
				xs = append(xs, r.IOPS)
			}
			return xs
		}
		best := func(peer bool, group string) string {
			name, v := "", 0.0
			for _, t := range targets {
				if t.Peer != peer || (group != "" && t.Group != group) || (group == "" && t.Group == "qcow2") {
					continue
				}
				if x := results[j.Name][t.Name].IOPS; x > v {
					name, v = t.Name, x
				}
			}
			return name
		}
		vs := func(group string) comparison { return compare(iops(best(false, group)), iops(best(true, group)), true) }
		ln, pn := best(false, ""), best(true, "")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.Name, ln, pn, vs(""), vs("mem"), vs("file"), vs("qcow2"))
	}
	tw.Flush()
}

// rssUnderLoad serves a 100 GiB sparse memory export and a 100 GiB sparse
// file and reports nbdlab's peak RSS while fio reads and writes all over
// them.
func rssUnderLoad(ctx context.Context, o Options, work string) error {
	const big = 100 << 30
	sparse := filepath.Join(work, "sparse100g.img")
	f, err := os.Create(sparse)
	if err != nil {
		return err
	}
	f.Truncate(big)
	f.Close()
	sock := filepath.Join(work, "big.sock")
	p, err := startTarget(ctx, o.Nbdlab, []string{"nbdlab", "serve", "--listen", "unix:" + sock,
		fmt.Sprintf("mem=mem:%d", int64(big)), "file=file:" + sparse}, sock)
	if err != nil {
		return err
	}
	defer p.Stop(30 * time.Second)
	jobs := []struct {
		export string
		job    Job
	}{
		{"mem", Job{"4k randread QD16", "randread", "4k", 16}},
		{"file", Job{"4k randread QD16", "randread", "4k", 16}},
		{"file", Job{"4k randrw QD16", "randrw", "4k", 16}},
		{"file", Job{"1M randrw QD4", "randrw", "1M", 4}},
	}
	fmt.Fprintf(o.Out, "\npeak RSS of nbdlab serve on 100 GiB sparse exports (goal < 64 MiB):\n")
	var worst int64
	for _, j := range jobs {
		r, err := measure(ctx, work, "nbd+unix:///"+j.export+"?socket="+sock, p, j.job, big, o.Duration)
		if err != nil {
			return err
		}
		worst = max(worst, r.PeakRSS)
		fmt.Fprintf(o.Out, "  %-5s %-18s %9.0f IOPS  peak RSS so far %d MiB\n", j.export, j.job.Name, r.IOPS, r.PeakRSS>>20)
	}
	verdict := "under"
	if worst >= 64<<20 {
		verdict = "OVER"
	}
	fmt.Fprintf(o.Out, "peak RSS %d MiB: %s the 64 MiB goal\n", worst>>20, verdict)
	return nil
}
