package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nbdlab/nbdlab/bench"
	"github.com/nbdlab/nbdlab/labnet"
)

const benchNFSUsage = "nfs [--setup TOPOLOGY/LINK]... [--target T]... [--kernel K] [--server S] [--quick] [--host-clock] [--out DIR]"

const benchKernelUsage = "kernel [--server S]... [--connections N]... [--time D] [--rounds N] [--target-ci F [--max-rounds N]] [--kernel K] [--quick] [--host-clock] [--out DIR]"

const benchUsage = benchKernelUsage + "\n       nbdlab bench " + benchNFSUsage

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("want a benchmark: kernel or nfs")
	}
	switch args[0] {
	case "kernel":
		return runBenchKernel(ctx, args[1:], stdout, stderr)
	case "nfs":
		return runBenchNFS(ctx, args[1:], stdout, stderr)
	case "agent":
		return runBenchAgent(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help":
		fmt.Fprintf(stdout, "usage: nbdlab bench %s\n\nRun 'nbdlab bench kernel --help' or 'nbdlab bench nfs --help' for their flags.\n", benchUsage)
		return flag.ErrHelp
	}
	return usagef("unknown benchmark %q: want kernel or nfs", args[0])
}

// runBenchKernel runs fio on /dev/nbdN against every server.
func runBenchKernel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench kernel", benchKernelUsage, stderr)
	var o bench.KernelOptions
	var servers stringList
	var conns intList
	fs.Var(&servers, "server", "server `S`; repeatable (default all: nbdlab-mem, nbdlab-file, nbd-server, nbdkit-memory, nbdkit-file, qemu-nbd)")
	fs.Var(&conns, "connections", "connections `N` per device; repeatable (default 1 and 4)")
	fs.DurationVar(&o.Time, "time", 0, "how long each fio job runs, after a second of ramp (default 3s; 1s with --quick)")
	fs.IntVar(&o.Rounds, "rounds", 0, "rounds, each running every job on every server in turn; the report gives the median, its confidence interval and verdicts, which need six or more (default 6; 1 with --quick)")
	fs.Float64Var(&o.TargetCI, "target-ci", 0, "after --rounds, go on until every interval is within ±`F` of its median (0.1: ±10%), up to --max-rounds")
	fs.IntVar(&o.MaxRounds, "max-rounds", 0, "with --target-ci, the most rounds run (default three times --rounds)")
	fs.StringVar(&o.Kernel, "kernel", "", "kernel `K` the VM boots, installed or fetched (default the newest installed)")
	fs.BoolVar(&o.Quick, "quick", false, "nbdlab-file and nbdkit-file, one connection, 1s jobs: a smoke test")
	fs.BoolVar(&o.HostClock, "host-clock", false, "under TCG, time the VM by the host's clock, not by the instructions it executes (QEMU -icount, 8 ns each: figures that repeat however busy the host is)")
	fs.StringVar(&o.Dir, "out", "bench-report/kernel", "`DIR` for results.json, report.md and the plot")
	hostFlags(fs, &o.Host, &o.JSON, "run on this machine's kernel, servers in a network namespace (needs root and nbd)")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	o.Servers, o.Conns, o.Out = servers, conns, stdout
	res, err := bench.RunKernel(ctx, o)
	if err != nil || o.Host {
		return err
	}
	if err := res.WriteKernelReport(stdout); err != nil {
		return err
	}
	printOutputs(stdout, res, o.Dir)
	return nil
}

// hostFlags are the flags a benchmark's VM mode runs it with inside.
func hostFlags(fs *flag.FlagSet, host *bool, json *string, what string) {
	fs.BoolVar(host, "host", false, what)
	fs.StringVar(json, "json", "", "with --host: write the figures to `FILE` only")
}

// parseNoArgs parses flags and refuses positional arguments.
func parseNoArgs(fs *flag.FlagSet, args []string) error {
	pos, err := parseFlags(fs, args)
	if err == nil && len(pos) > 0 {
		err = usagef("unexpected argument %q", pos[0])
	}
	return err
}

// printOutputs names the files a benchmark wrote.
func printOutputs(w io.Writer, res *bench.Results, dir string) {
	fmt.Fprintln(w, "written:")
	for _, f := range res.Outputs(dir) {
		fmt.Fprintln(w, "  "+f)
	}
}

// intList is a repeatable integer flag.
type intList []int

func (l *intList) String() string { return fmt.Sprint(*l) }

func (l *intList) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return fmt.Errorf("want a positive number, not %q", s)
	}
	*l = append(*l, n)
	return nil
}

// runBenchNFS compares a filesystem on NBD with NFS from the same server.
func runBenchNFS(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench nfs", benchNFSUsage, stderr)
	var o bench.NFSOptions
	var setups, targets stringList
	fs.Var(&setups, "setup", "`TOPOLOGY/LINK` to measure: netns or vms, and none, lan or wan; repeatable (default netns/none, netns/wan, vms/none)")
	fs.Var(&targets, "target", "target `T`: "+strings.Join(bench.NFSTargets(), ", ")+"; repeatable (default nbd, nfs4.2-sync, nfs3-sync; the async ones only when named)")
	fs.StringVar(&o.Kernel, "kernel", "", "kernel `K` the VMs boot, installed or fetched (default the newest installed)")
	fs.StringVar(&o.Server, "server", "nbdlab-file", "NBD server under ext4: nbdlab-file, nbdlab-mem, nbd-server, nbdkit-file, nbdkit-memory or qemu-nbd")
	fs.IntVar(&o.Connections, "connections", 1, "NBD connections (NFS uses one)")
	fs.IntVar(&o.Files, "files", 0, "files in the untarred tree (default 400; 200 with --quick; a fifth on wan and between VMs)")
	fs.IntVar(&o.Small, "small", 0, "files created and fsynced (default 50; 30 with --quick; a fifth on wan and between VMs)")
	fs.Int64Var(&o.FioSize, "fio-size", 0, "bytes of the sequential file (default 16 MiB; half on wan and between VMs)")
	fs.DurationVar(&o.FioTime, "fio-time", 0, "how long each random I/O job runs (default 1s)")
	fs.IntVar(&o.Rounds, "rounds", 0, "rounds, each visiting every target; the report gives the median, its confidence interval and verdicts, which need five or more (default 5; 1 with --quick)")
	fs.BoolVar(&o.HostClock, "host-clock", false, "under TCG, time the netns VM by the host's clock, not by the instructions it executes (QEMU -icount, 8 ns each: figures that repeat however busy the host is); the two VMs of a vms setup always keep the host's")
	fs.BoolVar(&o.Quick, "quick", false, "a small subset (netns/none and vms/none, nbd and nfs4.2-sync, small sizes): a smoke test of the whole path")
	fs.StringVar(&o.Dir, "out", "bench-report/nfs", "`DIR` for results.json, report.md and the plots")
	fs.StringVar(&o.Backing, "backing", "", "with --host: keep the exports (image, NFS export) in `DIR` on disk instead of a tmpfs")
	fs.StringVar(&o.Source, "source", "", "`DIR` whose first files make the untarred tree (default the Go distribution's src)")
	hostFlags(fs, &o.Host, &o.JSON, "run the netns setups on this machine's kernel (needs root, nbd and nfsd)")
	fs.StringVar(&o.Agent, "agent", "", internalFlag+"with --host in the client VM of a vms setup: the server VM's `IP`")
	fs.StringVar(&o.NIC, "nic", "", internalFlag+"with --host in the client VM of a vms setup: this VM's `IP`")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	o.Setups, o.Targets, o.Out = setups, targets, stdout
	res, err := bench.RunNFS(ctx, o)
	if err != nil {
		return err
	}
	if o.Host {
		return nil
	}
	if err := res.WriteNFSReport(stdout); err != nil {
		return err
	}
	printOutputs(stdout, res, o.Dir)
	return nil
}

// runBenchAgent is the server side of the NFS comparison; bench nfs
// starts it in a namespace or a VM of its own.
func runBenchAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench agent", "[--ip IP --link IFACE | --nic IP] [--backing DIR]", stderr)
	var o bench.AgentOptions
	fs.StringVar(&o.IP, "ip", "", "address to listen on")
	fs.StringVar(&o.Link, "link", "", "interface to shape")
	nic := fs.String("nic", "", "bring up this VM's NIC with `IP` and serve there (a VM of its own)")
	fs.StringVar(&o.Backing, "backing", "/run/nbdlab-bench-backing", "`DIR` to mount the exports' tmpfs on")
	fs.BoolVar(&o.OnDisk, "on-disk", false, "keep the exports in --backing as it is, not on a tmpfs")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *nic != "" {
		link, err := labnet.UpNIC(ctx, net.ParseIP(*nic))
		if err != nil {
			return err
		}
		o.IP, o.Link, o.OwnKernel = *nic, link, true
	}
	if o.IP == "" || o.Link == "" {
		return usagef("want --ip and --link, or --nic")
	}
	nbdlab, err := filepath.Abs("/proc/self/exe")
	if err != nil {
		return err
	}
	o.Nbdlab, o.Out = nbdlab, stdout
	return bench.RunAgent(ctx, o)
}
