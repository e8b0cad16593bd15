package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/conform/kernelsuite"
	"github.com/nbdlab/nbdlab/conform/protocol"
	"github.com/nbdlab/nbdlab/conform/report"
)

const conformServerUsage = "server [--list] [--run REGEX] [--patience D] [--json FILE] [--markdown FILE] [--junit FILE] [NAME=]URI..."

const conformKernelUsage = "[--kernel K]... [--server S]... [--host] [--run REGEX] [--repeat N] [--until-fail] [--stress-cpu N] [--strict] [--list] [--json FILE] [--markdown FILE] [--junit FILE]"

const conformUsage = conformKernelUsage + "\n       nbdlab conform " + conformServerUsage

func runConform(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "server" {
		return runConformKernel(ctx, args, stdout, stderr)
	}
	fs := newFlagSet("conform server", conformServerUsage, stderr)
	run := fs.String("run", "", "only the checks whose ID matches `REGEX` (see --list)")
	list := fs.Bool("list", false, "list the checks and exit")
	patience := fs.Duration("patience", 30*time.Second, "how long the defence checks wait, and load the server")
	jsonOut := fs.String("json", "", "write the report as JSON to `FILE`")
	mdOut := fs.String("markdown", "", "write the matrix as Markdown to `FILE`")
	junitOut := fs.String("junit", "", "write the report as JUnit XML to `FILE`")
	pos, err := parseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	if *list {
		for _, c := range protocol.Checks() {
			fmt.Fprintf(stdout, "%-42s %-6s %s\n", c.ID, c.Level, c.What)
		}
		return nil
	}
	if len(pos) == 0 {
		return usagef("want at least one NBD URI")
	}
	o := protocol.Options{Patience: *patience, Progress: func(target string, r report.Result) {
		fmt.Fprintf(stderr, "%s %s: %s\n", target, r.ID, r.Status)
	}}
	if *run != "" {
		re, err := regexp.Compile(*run)
		if err != nil {
			return usagef("--run: %v", err)
		}
		o.Run = re.MatchString
	}
	var servers []protocol.Server
	for _, a := range pos {
		s := protocol.Server{URI: a}
		if name, uri, ok := strings.Cut(a, "="); ok && !strings.Contains(name, ":") {
			s = protocol.Server{Name: name, URI: uri}
		}
		servers = append(servers, s)
	}
	r, err := protocol.CheckServers(ctx, servers, o)
	if err != nil {
		return err
	}
	if err := writeReports(r, stdout, *jsonOut, *mdOut, *junitOut); err != nil {
		return err
	}
	var gone []string
	for _, t := range r.Targets {
		if t.Error != "" {
			gone = append(gone, t.Name+": "+t.Error)
		}
	}
	if len(gone) > 0 {
		return exitError{code: 1, err: errors.New(strings.Join(gone, "; "))}
	}
	if n := r.MustFailures(); n > 0 {
		return exitError{code: 1, err: fmt.Errorf("%d MUST violations", n)}
	}
	return nil
}

// writeReports prints the matrix and writes the report files asked for.
func writeReports(r *report.Report, stdout io.Writer, jsonOut, mdOut, junitOut string) error {
	if err := r.WriteMatrix(stdout); err != nil {
		return err
	}
	for _, out := range []struct {
		file  string
		write func(io.Writer) error
	}{{jsonOut, r.WriteJSON}, {mdOut, r.WriteMarkdown}, {junitOut, r.WriteJUnit}} {
		if out.file != "" {
			if err := report.WriteFile(out.file, out.write); err != nil {
				return err
			}
		}
	}
	return nil
}

// repeatSet reports whether --repeat was given.
func repeatSet(fs *flag.FlagSet) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "repeat" })
	return set
}

// runConformKernel runs the kernel suite: the kernel's nbd client against
// every server, on every kernel (in VMs) or on this one (--host).
func runConformKernel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("conform", conformUsage, stderr)
	var o kernelsuite.Options
	var ks, servers stringList
	fs.Var(&ks, "kernel", "kernel `K` to run on, installed or fetched (release or debian:SUITE); repeatable (default: all)")
	fs.Var(&servers, "server", "server `S` to run against; repeatable (default: all; see --list)")
	fs.BoolVar(&o.Host, "host", false, "run on this machine's kernel, servers in network namespaces (needs root and nbd)")
	fs.BoolVar(&o.Guest, "guest", false, internalFlag+"with --host: this machine is a lab VM the suite may break (unloads nbd); set by the VM mode")
	fs.StringVar(&o.Run, "run", "", "only the cases whose ID matches `REGEX` (see --list)")
	fs.IntVar(&o.Repeat, "repeat", 1, "run each selected case `N` times against each server; a case that fails in some rounds is reported \"flaky k/N\" and fails the run")
	fs.BoolVar(&o.UntilFail, "until-fail", false, "stop repeating after the first round in which a case fails (with no --repeat, up to 100 rounds)")
	fs.IntVar(&o.StressCPU, "stress-cpu", 0, "run stress-ng with `N` CPU workers on this machine while the suite runs (bounded in time): the cases under a loaded host")
	fs.BoolVar(&o.Strict, "strict", false, "fail on a peer server's failure too, not only nbdlab's")
	fs.BoolVar(&o.NoUdev, "no-udev", false, "boot the VMs without systemd-udevd, as a bare system (by default udevd runs, and the cases meet its probing as users' systems do)")
	fs.BoolVar(&o.EveryServer, "every-server", false, "run the cases of the kernel's own behaviour (partitions, module races, link faults) with every server, not once per kernel")
	list := fs.Bool("list", false, "list the cases and servers and exit")
	jsonOut := fs.String("json", "", "write the report as JSON to `FILE`")
	mdOut := fs.String("markdown", "", "write the matrix as Markdown to `FILE`")
	junitOut := fs.String("junit", "", "write the report as JUnit XML (a testsuite per kernel and server) to `FILE`")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q (the server checker is 'nbdlab conform server URI')", pos[0])
	}
	if *list {
		for _, c := range kernelsuite.Cases() {
			fmt.Fprintf(stdout, "%-30s %s\n", c.ID, c.What)
		}
		fmt.Fprintln(stdout, "\nservers:")
		for _, s := range kernelsuite.Servers() {
			fmt.Fprintf(stdout, "  %-16s %s\n", s.Name, s.What)
		}
		return nil
	}
	if _, err := regexp.Compile(o.Run); err != nil {
		return usagef("--run: %v", err)
	}
	if o.Repeat < 1 {
		return usagef("--repeat %d: want 1 or more rounds", o.Repeat)
	}
	if o.UntilFail && !repeatSet(fs) {
		o.Repeat = 0 // the default for --until-fail
	}
	o.Kernels, o.Servers, o.Out = ks, servers, stdout
	res, err := kernelsuite.Run(ctx, o)
	if err != nil {
		return err
	}
	if o.Guest && *jsonOut != "" {
		// In a lab VM: the host merges, prints and judges.
		return report.WriteFile(*jsonOut, res.Report.WriteJSON)
	}
	if err := writeReports(res.Report, stdout, *jsonOut, *mdOut, *junitOut); err != nil {
		return err
	}
	if !res.Passed {
		what := "a case failed with nbdlab's server"
		if o.Strict {
			what = "a case failed"
		}
		return exitError{code: 1, err: fmt.Errorf("%s", what)}
	}
	return nil
}
