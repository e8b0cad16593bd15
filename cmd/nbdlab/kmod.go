package main

import (
	"context"
	"io"

	"github.com/nbdlab/nbdlab/kmod"
)

const kmodBuildUsage = "build [--kernel KVER] [--source DIR] [--force] [--dry-run] [--prefix DIR] [--sign-key KEY --sign-cert CERT] [--jobs N]"

func runKmod(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	args, err := verb(args, "kmod", "build")
	if err != nil {
		return err
	}
	fs := newFlagSet("kmod build", kmodBuildUsage, stderr)
	var o kmod.Options
	fs.StringVar(&o.Kernel, "kernel", "", "kernel to build for: an installed or fetched release, or debian:SUITE[/RELEASE] (default: the running kernel)")
	fs.StringVar(&o.Source, "source", "", "use this kernel source `DIR` instead of fetching one")
	fs.BoolVar(&o.Force, "force", false, "rebuild over an installed nbd.ko; build even where the distribution ships nbd.ko (nbdlab's then shadows it from updates/); accept a source version that does not match exactly")
	fs.BoolVar(&o.DryRun, "dry-run", false, "print every step without doing it")
	fs.StringVar(&o.Prefix, "prefix", "", "install under this root `DIR` instead of /")
	fs.StringVar(&o.SignKey, "sign-key", "", "private key `FILE` to sign with, where the kernel enforces signatures")
	fs.StringVar(&o.SignCert, "sign-cert", "", "certificate `FILE` of the signing key")
	fs.IntVar(&o.Jobs, "jobs", 0, "make -j (default: number of CPUs)")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q", rest[0])
	}
	o.Out = stdout
	_, err = kmod.Build(ctx, o)
	return err
}
