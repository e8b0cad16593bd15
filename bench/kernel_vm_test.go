//go:build vm

package bench

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/vm/vmtest"
)

// TestIntegrationKernelBenchQuick runs bench kernel --quick on the newest
// kernel: two servers, every job, the report.
func TestIntegrationKernelBenchQuick(t *testing.T) {
	ks := vmtest.Kernels(t)
	testenv.Need(t, "fio", "ip", "nbdkit")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var out bytes.Buffer
	dir := t.TempDir()
	res, err := RunKernel(ctx, KernelOptions{Quick: true, Rounds: 1, Kernel: ks[0].Release, Nbdlab: testenv.Nbdlab(t), Dir: dir, Out: &out})
	t.Logf("bench output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, f := range res.Figures {
		if f.Error != "" || f.Value <= 0 {
			t.Errorf("%s %s: value %g, error %q", f.Target, f.Workload, f.Value, f.Error)
		}
		got[f.Target]++
	}
	for _, s := range []string{"nbdlab-file", "nbdkit-file"} {
		if got[s] != len(KernelJobs()) {
			t.Errorf("%s: %d figures, want one per job (%d)", s, got[s], len(KernelJobs()))
		}
	}
}
