//go:build vm

package kernelsuite_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/conform/kernelsuite"
	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/vm/vmtest"
)

// TestIntegrationKernelSuite runs the kernel suite with nbdlab's server
// on every kernel of the matrix, one VM each: every case must pass or be
// not applicable.
func TestIntegrationKernelSuite(t *testing.T) {
	ks := vmtest.Kernels(t)
	testenv.Need(t, "fio", "mkfs.ext4", "sfdisk", "blkdiscard", "mdadm", "ip")
	var out bytes.Buffer
	o := kernelsuite.Options{Servers: []string{"nbdlab-file"}, Nbdlab: testenv.Nbdlab(t), Out: &out, Timeout: 15 * time.Minute}
	for _, k := range ks {
		o.Kernels = append(o.Kernels, k.Release)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(len(ks))*16*time.Minute)
	defer cancel()
	res, err := kernelsuite.Run(ctx, o)
	t.Logf("suite output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	var m bytes.Buffer
	res.Report.WriteMatrix(&m)
	t.Logf("matrix:\n%s", m.String())
	if len(res.Report.Targets) != len(ks) {
		t.Fatalf("%d targets for %d kernels", len(res.Report.Targets), len(ks))
	}
	if !res.Passed {
		t.Fatal("a case failed with nbdlab's server")
	}
}
