// Package vmtest is the one helper through which tests run commands in lab
// VMs. It builds a static nbdlab to serve as the guest init, logs the exact
// QEMU command line so a failure can be reproduced by hand, streams the
// guest's output into the test log, and shows the kernel log on failure.
//
// Tests that need VMs call Kernels: without QEMU or an installed kernel the
// test is skipped, or fails when CI=true.
package vmtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/kernels"
	"github.com/nbdlab/nbdlab/vm"
)

// Kernels returns the kernels a VM test should run on, newest first:
// the installed ones and those fetched into the cache (go run mage.go
// kernels fetches the matrix).
func Kernels(t testing.TB) []kernels.Kernel {
	t.Helper()
	testenv.Need(t, "qemu-system-x86_64")
	ks, err := kernels.All(kernels.Store{})
	if err != nil || len(ks) == 0 {
		testenv.Missing(t, fmt.Sprintf("no kernel installed or fetched (go run mage.go deps installs bookworm's; go run mage.go kernels fetches the matrix): %v", err))
	}
	return ks
}

// Output collects a guest's stdout and stderr.
type Output struct {
	mu             sync.Mutex
	Stdout, Stderr bytes.Buffer
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// Run boots cfg (Logf, KernelLog, the output writers and, unless set,
// Init filled in) and runs argv. The guest's output and, on failure, the
// kernel log go to the test log.
func Run(t testing.TB, cfg vm.Config, argv ...string) (*vm.Result, *Output, error) {
	t.Helper()
	out := &Output{}
	if cfg.Init == "" {
		cfg.Init = testenv.Nbdlab(t)
	}
	if cfg.Stdout == nil {
		cfg.Stdout = lockedWriter{&out.mu, &out.Stdout}
	}
	if cfg.Stderr == nil {
		cfg.Stderr = lockedWriter{&out.mu, &out.Stderr}
	}
	if cfg.KernelLog == "" {
		cfg.KernelLog = filepath.Join(t.TempDir(), "kernel.log")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Minute
	}
	cfg.Logf = func(format string, a ...any) { t.Logf("vm: "+format, a...) }
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout+time.Minute)
	defer cancel()
	res, err := vm.Run(ctx, cfg, argv...)
	t.Logf("guest stdout:\n%s\nguest stderr:\n%s", out.Stdout.String(), out.Stderr.String())
	if err != nil || (res != nil && res.ExitCode != 0) {
		if b, rerr := os.ReadFile(cfg.KernelLog); rerr == nil {
			t.Logf("kernel log %s:\n%s", cfg.KernelLog, b)
		}
	}
	return res, out, err
}
