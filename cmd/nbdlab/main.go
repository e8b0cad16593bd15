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
	"regexp"
	"runtime/debug"
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
	verbs   []string // the second words of a two-word command ("" for none)
}

func commands() []command {
	return []command{
		{"serve", "[--listen ADDR]... [--inetd] [TLS flags] [-v|-q] NAME=SPEC...", "serve exports over NBD", runServe, nil},
		{"connect", connectUsage, "attach an NBD export to /dev/nbdN through the kernel", runConnect, nil},
		{"disconnect", "DEVICE", "disconnect /dev/nbdN", runDisconnect, nil},
		{"list", "[--json] [DEVICE...]", "list /dev/nbd* devices and what is attached", runList, nil},
		{"attach", attachUsage, "serve an image from this process and attach it (like qemu-nbd -c)", runAttach, nil},
		{"detach", "DEVICE", "disconnect an attached image (by /dev/nbdN or a partition of it) and stop serving it", runDisconnect, nil},
		{"lab", "[--kernel KVER]", "build nbd.ko, boot it in a VM, attach, partition, mount, check (the main job)", runLab, nil},
		{"kernel", kernelUsage, "fetch Debian kernels into the cache, list and prune them", runKernel, []string{"fetch", "list", "prune"}},
		{"kmod", kmodBuildUsage, "build nbd.ko for an installed or fetched kernel and install it", runKmod, []string{"build"}},
		{"vm", vmRunUsage, "run a command under a distro kernel in a QEMU VM", runVM, []string{"run"}},
		{"bench", benchUsage, "benchmarks through the kernel: fio on /dev/nbdN against every server; NBD against NFS", runBench, []string{"kernel", "nfs"}},
		{"docs", docsUsage, "the man page and shell completions, made from this command table", runDocs, nil},
		{"conform", conformUsage, "the kernel's nbd client against NBD servers, on every kernel; or check a server against the specification", runConform, []string{"", "server"}},
	}
}

type commandKey struct{}

// withCommand records the name a command was called by, for commands
// that answer to two (disconnect and detach).
func withCommand(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, commandKey{}, name)
}

func commandName(ctx context.Context, def string) string {
	if n, ok := ctx.Value(commandKey{}).(string); ok {
		return n
	}
	return def
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
	if len(args) == 1 && (args[0] == "--version" || args[0] == "version") {
		fmt.Fprintln(stdout, version())
		return 0
	}
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
		fmt.Fprintln(w, "\nRun 'nbdlab help COMMAND' for a command's flags, 'nbdlab --version' for the version.")
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(withCommand(ctx, c.name), args[1:], stdout, stderr)
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

// version is the module's version and the VCS revision it was built
// from, as the Go toolchain recorded them.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "nbdlab (no build information)"
	}
	v, rev, dirty := bi.Main.Version, "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	out := "nbdlab " + v
	if rev != "" {
		out += " revision " + rev
		if dirty {
			out += " (modified)"
		}
	}
	return out + " " + bi.GoVersion
}

// newFlagSet returns a flag set that reports errors through usageError.
func newFlagSet(name, usage string, out io.Writer) *flag.FlagSet {
	// A two-word command's usage may start with its verb: say it once.
	if i := strings.LastIndex(name, " "); i >= 0 {
		usage = strings.TrimPrefix(usage, name[i+1:]+" ")
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	if describing != nil {
		describing.add(name, usage, fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: nbdlab %s %s\n", name, usage)
		printFlags(fs, out, "\nflags:\n")
	}
	return fs
}

// printFlags prints the flags help shows (not the internal ones) after
// heading, or nothing when there are none.
func printFlags(fs *flag.FlagSet, out io.Writer, heading string) {
	shown, n := flag.NewFlagSet(fs.Name(), flag.ContinueOnError), 0
	shown.SetOutput(out)
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.HasPrefix(f.Usage, internalFlag) {
			shown.Var(f.Value, f.Name, f.Usage)
			n++
		}
	})
	if n > 0 {
		fmt.Fprint(out, heading)
		shown.PrintDefaults()
	}
}

// internalFlag starts the usage of a flag nbdlab passes to itself (in a
// lab VM), which help does not show.
const internalFlag = "internal: "

// parseFlags parses args with flags and positional arguments in any order,
// up to a "--", after which everything is positional.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	if describing != nil {
		return nil, errDescribed // the flags are recorded; run nothing
	}
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
			return nil, usageError{asTyped(err.Error(), args)}
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
// (nbdlab kmod build, nbdlab vm run) and returns the arguments after it.
// -h alone stands for the verb's -h, which prints its flags.
func verb(args []string, group, want string) ([]string, error) {
	switch {
	case len(args) > 0 && args[0] == want:
		return args[1:], nil
	case len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help"):
		return args[:1], nil
	}
	return nil, usagef("want '%s %s'", group, want)
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return fmt.Sprint(*l) }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

// flagInError finds the flag Go's flag package names in its errors, which
// it always spells with one dash ("flag provided but not defined: -x").
var flagInError = regexp.MustCompile(`(: | flag )-([^\s:=]+)`)

// asTyped spells the flag an error names as the user typed it: --persistent,
// not -persistent.
func asTyped(msg string, args []string) string {
	return flagInError.ReplaceAllStringFunc(msg, func(m string) string {
		sub := flagInError.FindStringSubmatch(m)
		for _, a := range args {
			if a == "--"+sub[2] || strings.HasPrefix(a, "--"+sub[2]+"=") {
				return sub[1] + "--" + sub[2]
			}
		}
		return m
	})
}
