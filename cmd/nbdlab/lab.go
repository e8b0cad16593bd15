package main

import (
	"context"
	"io"
	"os"

	"github.com/nbdlab/nbdlab/lab"
)

func runLab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("lab", "[--kernel KVER]", stderr)
	kernel := fs.String("kernel", "", "kernel: an installed or fetched release, or debian:SUITE (default: the newest installed)")
	guest := fs.Bool("guest", false, internalFlag+"run the in-guest half (used inside the lab VM)")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *guest {
		// In the guest this executable may not be reachable by the
		// host's path; the kernel's link to it is.
		return lab.Guest(ctx, stdout, "/proc/self/exe")
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	return lab.Lab(ctx, lab.Options{Kernel: *kernel, Nbdlab: exe, Out: stdout})
}
