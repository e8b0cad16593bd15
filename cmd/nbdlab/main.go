// Command nbdlab serves, attaches, builds and tests the Linux Network Block
// Device. Run "nbdlab help" for its subcommands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nbdlab/nbdlab/vm"
)

// command is one subcommand. run returns a usageError for bad arguments.
type command struct {
	name    string
	usage   string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "[--listen ADDR]... [TLS flags] [-v] NAME=SPEC...", "serve exports over NBD", runServe},
		{"connect", connectUsage, "attach an NBD export to /dev/nbdN through the kernel", runConnect},
		{"disconnect", "DEVICE", "disconnect /dev/nbdN", runDisconnect},
		{"list", "", "list /dev/nbd* devices and what is attached", runList},
		{"attach", attachUsage, "serve an image from this process and attach it (like qemu-nbd -c)", runAttach},
		{"detach", "DEVICE", "disconnect an attached image (by /dev/nbdN or a partition of it) and stop serving it", runDisconnect},
		{"lab", "[--kernel KVER]", "build nbd.ko, boot it in a VM, attach, partition, mount, check (the main job)", runLab},
		{"kernel", kernelUsage, "fetch Debian kernels into the cache, list and prune them", runKernel},
		{"kmod", kmodBuildUsage, "build nbd.ko for an installed or fetched kernel and install it", runKmod},
		{"vm", vmRunUsage, "run a command under a distro kernel in a QEMU VM", runVM},
		{"bench", benchUsage, "benchmarks through the kernel: fio on /dev/nbdN against every server; NBD against NFS", runBench},
		{"conform", conformUsage, "the kernel's nbd client against NBD servers, on every kernel; or check a server against the specification", runConform},
	}
}

// usageError is a mistake in the command line; it exits 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// exitError carries a chosen exit status, such as a guest command's, and
// optionally an error to print.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	if vm.IsGuestInit() {
		vm.GuestInit() // never returns
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			return run(ctx, []string{args[1], "-h"}, stdout, stderr)
		}
		w := stdout
		if len(args) == 0 {
			w = stderr
		}
		fmt.Fprintln(w, "usage: nbdlab COMMAND [ARGS]\n\ncommands:")
		for _, c := range commands() {
			fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
		}
		fmt.Fprintln(w, "\nRun 'nbdlab help COMMAND' for a command's flags.")
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		var ue usageError
		var ee exitError
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "nbdlab %s: %s\nusage: nbdlab %s %s\n", c.name, ue.msg, c.name, c.usage)
			return 2
		case errors.As(err, &ee):
			if ee.err != nil {
				fmt.Fprintf(stderr, "nbdlab %s: %v\n", c.name, ee.err)
			}
			return ee.code
		default:
			// Package errors already say which package they come from.
			msg := strings.TrimPrefix(err.Error(), c.name+": ")
			fmt.Fprintf(stderr, "nbdlab %s: %s\n", c.name, msg)
			return 1
		}
	}
	fmt.Fprintf(stderr, "nbdlab: unknown command %q; run 'nbdlab help' for the list\n", args[0])
	return 2
}

// newFlagSet returns a flag set that reports errors through usageError.
func newFlagSet(name, usage string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: nbdlab %s %s\n\nflags:\n", name, usage)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args with flags and positional arguments in any order,
// up to a "--", after which everything is positional.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	defer func() { fs.SetOutput(out); fs.Usage = usage }()
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(out)
				usage()
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// verb checks that a command group's arguments start with its one verb
// (nbdlab kmod build, nbdlab vm run). For -h it prints the usage and
// returns flag.ErrHelp.
func verb(args []string, group, want, usage string, stdout io.Writer) error {
	switch {
	case len(args) > 0 && args[0] == want:
		return nil
	case len(args) > 0 && (args[0] == "-h" || args[0] == "--help"):
		fmt.Fprintf(stdout, "usage: nbdlab %s %s\n", group, usage)
		return flag.ErrHelp
	}
	return usagef("want '%s %s'", group, want)
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return fmt.Sprint(*l) }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }
