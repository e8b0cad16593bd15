package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/nbdlab/nbdlab/debian"
	"github.com/nbdlab/nbdlab/kernels"
	"github.com/nbdlab/nbdlab/kmod"
)

const kernelUsage = `fetch [--force] [--mirror URL] debian:SUITE[/RELEASE]...
       nbdlab kernel list
       nbdlab kernel prune [--all] [RELEASE...]`

func runKernel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("want 'kernel fetch', 'kernel list' or 'kernel prune'")
	}
	switch args[0] {
	case "fetch":
		return runKernelFetch(ctx, args[1:], stdout, stderr)
	case "list":
		return runKernelList(args[1:], stdout, stderr)
	case "prune":
		return runKernelPrune(args[1:], stdout, stderr)
	case "-h", "--help":
		fmt.Fprintf(stdout, "usage: nbdlab kernel %s\n", kernelUsage)
		return flag.ErrHelp
	}
	return usagef("unknown 'kernel %s'; want fetch, list or prune", args[0])
}

func runKernelFetch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usage = "fetch [--force] [--mirror URL] debian:SUITE[/RELEASE]..."
	fs := newFlagSet("kernel fetch", usage, stderr)
	force := fs.Bool("force", false, "fetch a kernel whose headers or source the suite no longer lists, without them")
	mirror := fs.String("mirror", debian.DefaultMirror, "Debian mirror `URL`")
	keyring := fs.String("keyring", debian.DefaultKeyring, "keyring `FILE` the suite's InRelease must be signed with")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		return usagef("name a kernel: debian:SUITE (its newest) or debian:SUITE/RELEASE, e.g. debian:sid")
	}
	for _, spec := range rest {
		if _, err := kernels.ParseSpec(spec); err != nil {
			return usagef("%v", err)
		}
	}
	progress := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	for _, spec := range rest {
		start := time.Now()
		k, err := kernels.Fetch(ctx, spec, kernels.FetchOptions{Force: *force, Progress: progress,
			Archive: &debian.Archive{Mirror: *mirror, Keyring: *keyring, Out: stdout}})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s (%s) ready in %s; build nbd.ko for it with: nbdlab kmod build --kernel %s\n",
			spec, k.Release, k.Version, time.Since(start).Round(100*time.Millisecond), k.Release)
	}
	return nil
}

func runKernelList(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("kernel list", "", stderr)
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q", rest[0])
	}
	ks, err := kernels.All(kernels.Store{})
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RELEASE\tORIGIN\tVERSION\tSIZE\tNBD.KO\tWHERE")
	for _, k := range ks {
		where, v := k.Image, k.Version
		var bytes int64
		if k.IsFetched() {
			where = kernels.Store{}.KernelDir(k.Release)
			bytes = kernels.DiskUsage(where) + kmod.CacheUsage(k.Release)
		} else {
			// The image and its modules; the package manager owns them.
			if fi, err := os.Stat(k.Image); err == nil {
				bytes = fi.Size()
			}
			bytes += kernels.DiskUsage(k.Modules) + kmod.CacheUsage(k.Release)
			if v == "" {
				v = kernels.InstalledVersion(k.Release)
			}
		}
		size := debian.Size(bytes)
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.Release, k.Origin, v, size, k.NBD(), where)
	}
	if len(ks) == 0 {
		fmt.Fprintln(tw, "(none: install one with apt-get install linux-image-amd64, or nbdlab kernel fetch debian:SUITE)")
	}
	return tw.Flush()
}

func runKernelPrune(args []string, stdout, stderr io.Writer) error {
	const usage = "prune [--all] [RELEASE...]"
	fs := newFlagSet("kernel prune", usage, stderr)
	all := fs.Bool("all", false, "remove every fetched kernel, not only the files they no longer need")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	store := kernels.Store{}
	var freed int64
	if *all {
		ks, err := store.List()
		if err != nil {
			return err
		}
		for _, k := range ks {
			rest = append(rest, k.Release)
		}
	}
	for _, rel := range rest {
		n, err := store.Remove(rel)
		if err != nil {
			return err
		}
		n += kmod.RemoveCache(rel)
		fmt.Fprintf(stdout, "removed %s (%s)\n", rel, debian.Size(n))
		freed += n
	}
	if len(rest) == 0 {
		// What no kernel needs any more: .debs already unpacked, and for a
		// kernel whose nbd.ko is built, its source and build trees.
		ks, err := store.List()
		if err != nil {
			return err
		}
		for _, k := range ks {
			built := k.NBD() == "built by nbdlab"
			n, err := store.RemoveDebs(k.Release, built)
			if err != nil {
				return err
			}
			if built {
				n += kmod.RemoveCache(k.Release)
			}
			if n > 0 {
				fmt.Fprintf(stdout, "%s: freed %s\n", k.Release, debian.Size(n))
			}
			freed += n
		}
	}
	fmt.Fprintf(stdout, "freed %s in all\n", debian.Size(freed))
	return nil
}
