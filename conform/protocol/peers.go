package protocol

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/conform/report"
	"github.com/nbdlab/nbdlab/internal/command"
	"github.com/nbdlab/nbdlab/internal/selfbuild"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/servers"
)

// PeersOptions configure RunPeers.
type PeersOptions struct {
	Out      io.Writer // the matrix and progress; default os.Stdout
	Dir      string    // where report.json, report.md and junit.xml go; default conform-report
	Patience time.Duration
	Nbdlab   string // the nbdlab binary; default one built from this tree
}

// peer is a server to start for the matrix, on a unix socket in dir,
// exporting "d" (64 MiB) writable.
type peer struct {
	name string
	argv func(dir, sock, img string) ([]string, error)
}

func peers() []peer {
	return []peer{
		{"nbdlab", func(_, sock, _ string) ([]string, error) {
			return []string{"nbdlab", "serve", "--listen", "unix:" + sock, "d=mem:64M"}, nil
		}},
		{"nbdkit", func(_, sock, _ string) ([]string, error) {
			return []string{"nbdkit", "-f", "-U", sock, "memory", "64M"}, nil
		}},
		{"qemu-nbd", func(_, sock, img string) ([]string, error) {
			return []string{"qemu-nbd", "-t", "--shared=0", "-f", "raw", "-x", "d", "-k", sock, img}, nil
		}},
		{"nbd-server", func(dir, sock, img string) ([]string, error) {
			return servers.NBDServer(dir, nbd.Addr{Network: "unix", Address: sock}, img)
		}},
	}
}

// RunPeers starts nbdlab serve, nbdkit, qemu-nbd and nbd-server, checks
// each, prints the matrix and writes the reports. It fails when nbdlab
// does not pass every check; what the peers fail is a finding, shown in
// the matrix.
func RunPeers(ctx context.Context, o PeersOptions) error {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Dir == "" {
		o.Dir = "conform-report"
	}
	if err := command.Require("nbdkit", "qemu-nbd", "nbd-server"); err != nil {
		return fmt.Errorf("conform: %w", err)
	}
	if o.Nbdlab == "" {
		var err error
		if o.Nbdlab, err = selfbuild.Nbdlab(ctx); err != nil {
			return err
		}
	}
	work, err := os.MkdirTemp("", "nbdlab-conform-")
	if err != nil {
		return fmt.Errorf("conform: %w", err)
	}
	defer os.RemoveAll(work)
	var targets []Server
	for _, p := range peers() {
		dir := filepath.Join(work, p.name)
		os.MkdirAll(dir, 0o755)
		img, sock := filepath.Join(dir, "disk.img"), filepath.Join(dir, "nbd.sock")
		if err := os.WriteFile(img, nil, 0o644); err != nil {
			return fmt.Errorf("conform: %w", err)
		}
		if err := os.Truncate(img, 64<<20); err != nil {
			return fmt.Errorf("conform: %w", err)
		}
		argv, err := p.argv(dir, sock, img)
		if err != nil {
			return fmt.Errorf("conform: %s: %w", p.name, err)
		}
		proc, err := servers.StartOn(ctx, sock, o.Nbdlab, argv...)
		if err != nil {
			return fmt.Errorf("conform: %w", err)
		}
		defer proc.Stop(10 * time.Second)
		targets = append(targets, Server{Name: p.name, URI: nbd.Addr{Network: "unix", Address: sock}.URI("d")})
	}
	fmt.Fprintf(o.Out, "conform: %d checks against %d servers\n", len(Checks()), len(targets))
	r, err := CheckServers(ctx, targets, Options{Patience: o.Patience, Progress: func(target string, res report.Result) {
		if res.Status != report.Pass {
			fmt.Fprintf(o.Out, "  %-10s %-42s %s %s\n", target, res.ID, res.Status, res.Detail)
		}
	}})
	if err != nil {
		return err
	}
	if err := r.WriteMatrix(o.Out); err != nil {
		return err
	}
	if err := r.WriteFiles(o.Dir); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "reports in %s\n", o.Dir)
	var bad []string
	for _, res := range r.Targets[0].Results {
		if res.Status != report.Pass {
			bad = append(bad, res.ID)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("conform: nbdlab serve does not pass %s", strings.Join(bad, ", "))
	}
	return nil
}
