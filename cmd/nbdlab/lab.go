package main

import (
	"context"
	"io"
	"os"

	"github.com/nbdlab/nbdlab/lab"
)

func runLab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("lab", "[--kernel KVER]", stderr)
	kernel := fs.String("kernel", "", "installed kernel release (default: the newest)")
	guest := fs.Bool("guest", false, "run the in-guest half (used inside the lab VM)")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if *guest {
		return lab.Guest(ctx, stdout, exe)
	}
	return lab.Lab(ctx, lab.Options{Kernel: *kernel, Nbdlab: exe, Out: stdout})
}
