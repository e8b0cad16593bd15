package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/vm"
)

const vmRunUsage = "run [--kernel KVER|debian:SUITE|PATH [--modules DIR]] [--mem SIZE] [--cpus N] [--timeout D] [--share HOSTDIR[:GUESTDIR]]... [--no-udev] [-v] -- COMMAND..."

func runVM(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	args, err := verb(args, "vm", "run")
	if err != nil {
		return err
	}
	fs := newFlagSet("vm run", vmRunUsage, stderr)
	kernel := fs.String("kernel", "", "installed or fetched kernel release, debian:SUITE[/RELEASE] (fetched), or a bzImage path (default: newest installed)")
	modules := fs.String("modules", "", "modules `DIR` for a bzImage given by path")
	mem := fs.String("mem", "1024M", "guest memory (QEMU -m)")
	cpus := fs.Int("cpus", 2, "guest CPUs")
	timeout := fs.Duration("timeout", 10*time.Minute, "kill the VM after this long (0: never)")
	accel := fs.String("accel", "", "kvm or tcg (default: kvm only where a probe showed it works)")
	klog := fs.String("kernel-log", "", "keep the guest kernel's console in this `FILE`")
	verbose := fs.Bool("v", false, "print the QEMU command line and boot time")
	noUdev := fs.Bool("no-udev", false, "boot without systemd-udevd: device nodes from devtmpfs alone, partitions only where something rereads the table (the guest otherwise runs udevd with the host's rules)")
	var shares stringList
	fs.Var(&shares, "share", "`HOSTDIR[:GUESTDIR]` to make writable in the guest; repeatable")
	argv, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(argv) == 0 {
		return usagef("no command given; put it after --")
	}
	cfg := vm.Config{Kernel: *kernel, Modules: *modules, Memory: *mem, CPUs: *cpus, Timeout: *timeout,
		Accel: *accel, KernelLog: *klog, NoUdev: *noUdev, Stdout: stdout, Stderr: stderr}
	if *verbose {
		cfg.Logf = func(format string, a ...any) { fmt.Fprintf(stderr, "nbdlab vm: "+format+"\n", a...) }
	}
	for _, s := range shares {
		host, guest, _ := strings.Cut(s, ":")
		cfg.Shares = append(cfg.Shares, vm.Share{Host: host, Guest: guest})
	}
	res, err := vm.Run(ctx, cfg, argv...)
	if err != nil {
		var te *vm.TimeoutError
		if errors.As(err, &te) {
			return exitError{124, err}
		}
		return err
	}
	if res.ExitCode != 0 {
		return exitError{code: res.ExitCode}
	}
	return nil
}
