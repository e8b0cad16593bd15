//go:build vm

package vm_test

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/kernels"
	"github.com/nbdlab/nbdlab/vm"
	"github.com/nbdlab/nbdlab/vm/vmtest"
)

// forEachKernel runs fn as a subtest for every kernel installed or fetched.
func forEachKernel(t *testing.T, fn func(t *testing.T, k kernels.Kernel)) {
	for _, k := range vmtest.Kernels(t) {
		t.Run(k.Release, func(t *testing.T) { fn(t, k) })
	}
}

func TestIntegrationCommandStreamsAndStatus(t *testing.T) {
	forEachKernel(t, func(t *testing.T, k kernels.Kernel) {
		res, out, err := vmtest.Run(t, vm.Config{Kernel: k.Release}, "sh", "-c", "uname -r; echo err >&2; exit 7")
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 7 {
			t.Errorf("exit code %d, want 7", res.ExitCode)
		}
		if got := strings.TrimSpace(out.Stdout.String()); got != k.Release {
			t.Errorf("stdout %q, want the release %q", got, k.Release)
		}
		if got := out.Stderr.String(); got != "err\n" {
			t.Errorf("stderr %q, want %q", got, "err\n")
		}
	})
}

// When stdout and stderr are one destination (2>&1, a terminal), the
// guest command's output arrives in the order it was written.
func TestIntegrationOneOutputKeepsOrder(t *testing.T) {
	k := vmtest.Kernels(t)[0]
	var buf bytes.Buffer
	script := "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done; ls /nonexistent; echo after"
	res, _, err := vmtest.Run(t, vm.Config{Kernel: k.Release, Stdout: &buf, Stderr: &buf}, "sh", "-c", script)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("exit code %d", res.ExitCode)
	}
	var want strings.Builder
	for i := 1; i <= 5; i++ {
		fmt.Fprintf(&want, "out%d\nerr%d\n", i, i)
	}
	want.WriteString("ls: cannot access '/nonexistent': No such file or directory\nafter\n")
	if buf.String() != want.String() {
		t.Errorf("output:\n%s\nwant:\n%s", buf.String(), want.String())
	}
}

// PID 1 collects orphans: three children of a shell that exits before
// they end are adopted by init, end, and must leave no zombie behind; the
// command's own exit status still reaches the host.
func TestIntegrationOrphansAreReaped(t *testing.T) {
	k := vmtest.Kernels(t)[0]
	script := `sh -c 'for i in 1 2 3; do sleep 0.$i & done; exit 0'
sleep 2
for s in /proc/[0-9]*/stat; do
	read -r line <"$s" 2>/dev/null || continue
	set -- ${line##*) }
	[ "$1" = Z ] && [ "$2" = 1 ] && echo "zombie: $line"
done
exit 3`
	res, out, err := vmtest.Run(t, vm.Config{Kernel: k.Release}, "sh", "-c", script)
	if err != nil {
		t.Fatal(err)
	}
	if z := out.Stdout.String(); z != "" {
		t.Errorf("orphans left as zombies of PID 1:\n%s", z)
	}
	if res.ExitCode != 3 {
		t.Errorf("exit code %d, want the command's 3", res.ExitCode)
	}
}

func TestIntegrationWritesStayInGuestUnlessShared(t *testing.T) {
	forEachKernel(t, func(t *testing.T, k kernels.Kernel) {
		share := t.TempDir()
		outside := filepath.Join(os.TempDir(), fmt.Sprintf("nbdlab-vm-leak-%d", time.Now().UnixNano()))
		outsideVar := fmt.Sprintf("/var/tmp/nbdlab-vm-leak-%d", time.Now().UnixNano())
		script := fmt.Sprintf(`set -e
echo guest > %[1]s
echo guest > %[2]s
echo shared > %[3]s/from-guest
mkdir -p /mnt/inguest && echo x > /mnt/inguest/y
cat %[2]s`, outside, outsideVar, share)
		res, out, err := vmtest.Run(t, vm.Config{Kernel: k.Release, Shares: []vm.Share{{Host: share}}}, "sh", "-c", script)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 || out.Stdout.String() != "guest\n" {
			t.Fatalf("guest script: exit %d, stdout %q", res.ExitCode, out.Stdout.String())
		}
		for _, p := range []string{outside, outsideVar, "/mnt/inguest"} {
			if _, err := os.Stat(p); err == nil {
				os.RemoveAll(p)
				t.Errorf("%s, written in the guest outside a share, reached the host", p)
			}
		}
		b, err := os.ReadFile(filepath.Join(share, "from-guest"))
		if err != nil || string(b) != "shared\n" {
			t.Errorf("file written to the share: %q, %v; want it on the host", b, err)
		}
	})
}

func TestIntegrationTimeoutIsReported(t *testing.T) {
	forEachKernel(t, func(t *testing.T, k kernels.Kernel) {
		start := time.Now()
		_, _, err := vmtest.Run(t, vm.Config{Kernel: k.Release, Timeout: 20 * time.Second}, "sleep", "600")
		var te *vm.TimeoutError
		if !errors.As(err, &te) {
			t.Fatalf("got %v, want a TimeoutError", err)
		}
		if d := time.Since(start); d > time.Minute {
			t.Errorf("timeout of 20s took %s to report", d)
		}
		if !strings.Contains(err.Error(), "timed out after 20s") {
			t.Errorf("message %q does not say it timed out", err)
		}
	})
}

func TestIntegrationPanicIsReported(t *testing.T) {
	forEachKernel(t, func(t *testing.T, k kernels.Kernel) {
		_, _, err := vmtest.Run(t, vm.Config{Kernel: k.Release}, "sh", "-c", "echo c > /proc/sysrq-trigger; sleep 60")
		var pe *vm.PanicError
		if !errors.As(err, &pe) {
			t.Fatalf("got %v, want a PanicError", err)
		}
		if !strings.Contains(pe.Tail, "Kernel panic") || !strings.Contains(pe.Tail, "sysrq") {
			t.Errorf("panic report lacks the kernel's last lines:\n%s", pe.Tail)
		}
	})
}

func TestIntegrationTwoVMsAtOnce(t *testing.T) {
	ks := vmtest.Kernels(t)
	var wg sync.WaitGroup
	results := make([]string, 2)
	errs := make([]error, 2)
	for i := range 2 {
		k := ks[i%len(ks)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, out, err := vmtest.Run(t, vm.Config{Kernel: k.Release}, "sh", "-c", fmt.Sprintf("echo vm%d $(uname -r)", i))
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("exit %d", res.ExitCode)
			}
			results[i], errs[i] = out.Stdout.String(), err
		}()
	}
	wg.Wait()
	for i := range 2 {
		want := fmt.Sprintf("vm%d %s\n", i, ks[i%len(ks)].Release)
		if errs[i] != nil || results[i] != want {
			t.Errorf("VM %d: %q, %v; want %q", i, results[i], errs[i], want)
		}
	}
}

// TestIntegrationDynamicInit boots with the kind of nbdlab go install
// makes where cgo is on: dynamically linked. Its loader and libraries
// travel in the initramfs.
func TestIntegrationDynamicInit(t *testing.T) {
	k := vmtest.Kernels(t)[0]
	testenv.Need(t, "gcc")
	bin := filepath.Join(t.TempDir(), "nbdlab")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/nbdlab/nbdlab/cmd/nbdlab")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	dynamic := false
	for _, p := range f.Progs {
		dynamic = dynamic || p.Type == elf.PT_INTERP
	}
	f.Close()
	if !dynamic {
		t.Fatal("the cgo build is static; this test would prove nothing")
	}
	res, out, err := vmtest.Run(t, vm.Config{Kernel: k.Release, Init: bin}, vm.InitExe, "help")
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || !strings.Contains(out.Stdout.String(), "usage: nbdlab") {
		t.Fatalf("the dynamic init ran nothing: exit %d, stdout %q", res.ExitCode, out.Stdout.String())
	}
}

// The guest is a normal Linux: bash's process substitution works (it
// opens /dev/fd/N), debugfs and tracefs are mounted, and systemd-udevd
// runs, its devices settled; with NoUdev it does not. A block device's
// partitions appear as udev sees them: nbd-client issues no BLKRRPART,
// and only udev's probe makes /dev/nbd0p1 appear after it connects.
func TestIntegrationGuestIsANormalSystem(t *testing.T) {
	testenv.Need(t, "bash", "nbd-server", "nbd-client", "sfdisk")
	const script = `set -e
diff <(echo same) <(echo same) && echo OK procsub
test -e /dev/stdin && test -e /dev/stderr && echo OK std
test -d /sys/kernel/debug/block && test -e /sys/kernel/tracing/trace && echo OK debugfs
if pgrep -x systemd-udevd >/dev/null; then echo UDEVD; else echo NO-UDEVD; fi
truncate -s 64M /tmp/p.img
printf 'label: dos\n,,L\n' | sfdisk -q /tmp/p.img
modprobe nbd nbds_max=4 max_part=8
printf '[generic]\n[d]\nexportname = /tmp/p.img\n' > /tmp/nbd.conf
nbd-server -C /tmp/nbd.conf 10809
nbd-client -N d 127.0.0.1 10809 /dev/nbd0 >/dev/null
udevadm settle --timeout=30 || true
for i in $(seq 100); do test -b /dev/nbd0p1 && break; sleep 0.1; done
if test -b /dev/nbd0p1; then echo PART; else echo NO-PART; fi
nbd-client -d /dev/nbd0 >/dev/null`
	first := true
	forEachKernel(t, func(t *testing.T, k kernels.Kernel) {
		// Without udev on one kernel: what it shows is the same on all.
		modes := []bool{false}
		if first {
			modes, first = []bool{false, true}, false
		}
		for _, noUdev := range modes {
			res, out, err := vmtest.Run(t, vm.Config{Kernel: k.Release, NoUdev: noUdev}, "bash", "-c", script)
			if err != nil {
				t.Fatal(err)
			}
			got := out.Stdout.String()
			want := []string{"OK procsub", "OK std", "OK debugfs", "UDEVD", "PART"}
			if noUdev {
				want = []string{"OK procsub", "OK std", "OK debugfs", "NO-UDEVD", "NO-PART"}
			}
			if res.ExitCode != 0 {
				t.Fatalf("NoUdev=%v: guest script exited %d:\n%s", noUdev, res.ExitCode, got)
			}
			for _, w := range want {
				if !strings.Contains(got, w+"\n") {
					t.Errorf("NoUdev=%v: guest output lacks %q:\n%s", noUdev, w, got)
				}
			}
		}
	})
}
