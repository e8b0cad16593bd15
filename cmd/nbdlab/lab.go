package main

import (
	"context"
	"io"
	"os"

	"github.com/nbdlab/nbdlab/harness"
)

func runLab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("lab", "[--kernel KVER]", stderr)
	kernel := fs.String("kernel", "", "installed kernel release (default: the newest)")
	guest := fs.Bool("guest", false, "run the in-guest half (used inside the lab VM)")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *guest {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		return harness.LabGuest(ctx, stdout, exe)
	}
	return harness.Lab(ctx, harness.LabOptions{Kernel: *kernel, Out: stdout})
}
