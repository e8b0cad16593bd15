//go:build vm

package kmod_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/kmod"
	"github.com/nbdlab/nbdlab/vm"
	"github.com/nbdlab/nbdlab/vm/vmtest"
)

// guestCheck runs in the lab VM: the built module loads from updates/,
// /dev/nbd0 appears, and the distribution's nbd-client attaches an export
// of nbd-server on the guest's loopback that reads and writes.
const guestCheck = `set -e
modprobe nbd
modinfo -F filename nbd
test -b /dev/nbd0
truncate -s 64M /tmp/disk.img
printf '[generic]\n[disk]\nexportname = /tmp/disk.img\n' > /tmp/nbd-server.conf
nbd-server -C /tmp/nbd-server.conf
for i in $(seq 50); do nbd-client -N disk 127.0.0.1 /dev/nbd0 && break; sleep 0.2; done
head -c 4194304 /dev/urandom > /tmp/data
dd if=/tmp/data of=/dev/nbd0 bs=1M oflag=direct status=none
dd if=/dev/nbd0 of=/tmp/back bs=1M count=4 iflag=direct status=none
cmp /tmp/data /tmp/back
cmp /tmp/data /tmp/disk.img -n 4194304
nbd-client -d /dev/nbd0
echo GUEST-OK
`

// TestIntegrationBuildNbd builds nbd.ko for every kernel of the matrix
// through the buildNbd path (Debian sources from apt for an installed
// kernel, the fetched source for a fetched one), twice to check the
// cache, and proves each module in a VM of its kernel. It installs into
// the real /lib/modules (or the fetched tree), so it needs root.
func TestIntegrationBuildNbd(t *testing.T) {
	testenv.Need(t, "apt-get", "dpkg-deb", "make", "gcc", "depmod", "nbd-server", "nbd-client")
	if os.Geteuid() != 0 {
		testenv.Missing(t, "not root: building and installing nbd.ko into /lib/modules needs root")
	}
	for _, k := range vmtest.Kernels(t) {
		t.Run(k.Release, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()
			var first, second bytes.Buffer
			r1, err := kmod.Build(ctx, kmod.Options{Kernel: k.Release, Force: true, Out: &first})
			t.Logf("first build:\n%s", first.String())
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(r1.Vermagic, k.Release+" ") {
				t.Fatalf("vermagic %q, want %q first", r1.Vermagic, k.Release)
			}
			if want := filepath.Join(k.Modules, "updates/nbd.ko"); r1.Module != want {
				t.Fatalf("installed at %s, want %s", r1.Module, want)
			}
			r2, err := kmod.Build(ctx, kmod.Options{Kernel: k.Release, Force: true, Out: &second})
			t.Logf("second build:\n%s", second.String())
			if err != nil {
				t.Fatal(err)
			}
			reused := "reusing cached"
			if k.IsFetched() {
				reused = "reusing unpacked source"
			}
			for _, want := range []string{reused, "reusing prepared build directory"} {
				if !strings.Contains(second.String(), want) {
					t.Errorf("second build did not reuse the cache (no %q)", want)
				}
			}
			t.Logf("first build %s, second %s (ratio %.2f)", r1.TotalTime, r2.TotalTime, r2.TotalTime.Seconds()/r1.TotalTime.Seconds())
			info, err := kmod.ModInfo(r2.Module)
			if err != nil || !strings.HasPrefix(info["vermagic"], k.Release+" ") {
				t.Fatalf("installed module: vermagic %q, %v", info["vermagic"], err)
			}

			res, out, err := vmtest.Run(t, vm.Config{Kernel: k.Release, Timeout: 5 * time.Minute}, "sh", "-c", guestCheck)
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != 0 || !strings.Contains(out.Stdout.String(), "GUEST-OK") {
				t.Fatalf("guest check exited %d", res.ExitCode)
			}
			if !strings.Contains(out.Stdout.String(), "/lib/modules/"+k.Release+"/updates/nbd.ko") {
				t.Errorf("modinfo -F filename nbd does not show updates/: %q", out.Stdout.String())
			}
		})
	}
}
