package ci

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nbdlab/nbdlab/internal/step"
	"github.com/nbdlab/nbdlab/kernels"
	"github.com/nbdlab/nbdlab/kmod"
)

// Matrix returns the kernels the suite runs on: every installed one
// (bookworm's two here), and the newest of trixie-backports and of sid.
// KERNELS (space-separated specs) replaces it.
func Matrix() []string {
	if v := strings.Fields(os.Getenv("KERNELS")); len(v) > 0 {
		return v
	}
	return []string{"installed", "debian:trixie-backports", "debian:sid"}
}

// Kernels fetches the kernels of specs ("installed" stands for all
// installed ones) and builds nbd.ko for each. A suite that cannot be
// fetched (the mirror is down, the suite moved on without its source)
// falls back to the newest kernel fetched from it before, with a warning
// naming why; with none to fall back on, it fails.
func Kernels(ctx context.Context, w io.Writer, specs []string) ([]kernels.Kernel, error) {
	s := step.New(w, 0)
	var ks []kernels.Kernel
	for _, spec := range specs {
		if spec == "installed" {
			inst, err := kernels.Installed("/")
			if err != nil {
				return nil, err
			}
			ks = append(ks, inst...)
			continue
		}
		var k kernels.Kernel
		err := s.Do("fetch "+spec, func() error {
			var err error
			k, err = kernels.Fetch(ctx, spec, kernels.FetchOptions{Progress: s.Printf})
			if err == nil {
				return nil
			}
			old, ferr := kernels.Find(spec, "", kernels.Store{})
			if ferr != nil {
				return err
			}
			s.Printf("WARNING: %v; using %s, fetched from %s on %s", err, old.Release, old.Origin, old.Fetched.Format("2006-01-02"))
			k = old
			return nil
		})
		if err != nil {
			return nil, err
		}
		ks = append(ks, k)
	}
	for _, k := range ks {
		if err := s.Do("build nbd.ko for "+k.Release, func() error {
			_, err := kmod.Build(ctx, kmod.Options{Kernel: k.Release, OverDistro: true, Out: step.Indented(w)})
			return err
		}); err != nil {
			return nil, fmt.Errorf("%s (%s %s): %w", k.Release, k.Origin, k.Version, err)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "kernel matrix (%s):\n", s.Elapsed().Round(time.Second))
	for _, k := range ks {
		fmt.Fprintf(tw, "  %s\t%s\t%s\tnbd.ko %s\n", k.Release, k.Origin, k.Version, k.NBD())
	}
	return ks, tw.Flush()
}
