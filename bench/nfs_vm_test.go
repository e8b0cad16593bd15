//go:build vm

package bench_test

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/bench"
	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/vm/vmtest"
)

// TestIntegrationNFSQuick runs bench nfs --quick on the newest kernel:
// both topologies, NBD and NFSv4.2, every workload, and the reports.
func TestIntegrationNFSQuick(t *testing.T) {
	ks := vmtest.Kernels(t)
	testenv.Need(t, "fio", "mkfs.ext4", "tar", "ip", "rpc.nfsd", "rpc.mountd", "rpcbind", "exportfs", "mount.nfs")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var out bytes.Buffer
	dir := t.TempDir()
	res, err := bench.RunNFS(ctx, bench.NFSOptions{Quick: true, Kernel: ks[0].Release, Nbdlab: testenv.Nbdlab(t), Dir: dir, Out: &out})
	t.Logf("bench output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, f := range res.Figures {
		if f.Error != "" || f.Value <= 0 || f.Wall <= 0 {
			t.Errorf("%s/%s %s %s: value %g, wall %g, error %q", f.Topology, f.Link, f.Target, f.Workload, f.Value, f.Wall, f.Error)
		}
		got[f.Topology+" "+f.Target]++
	}
	for _, key := range []string{"netns nbd", "netns nfs4.2-sync", "vms nbd", "vms nfs4.2-sync"} {
		if got[key] != len(bench.Workloads()) {
			t.Errorf("%s: %d figures, want one per workload (%d)", key, got[key], len(bench.Workloads()))
		}
	}
	for _, f := range res.Outputs(dir) {
		if fi, err := os.Stat(f); err != nil || fi.Size() == 0 {
			t.Errorf("output %s: %v", f, err)
		}
	}
}
