package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdlab/nbdlab/kernels"
)

// kvmProbeTimeout bounds the KVM probe: under working KVM a stock kernel
// reaches its init in well under a second.
const kvmProbeTimeout = 6 * time.Second

// chooseAccel returns "kvm" if a stock kernel is known to boot under KVM
// here, else "tcg". The first call on a machine probes by booting k under
// KVM, with the initramfs initrd and a short timeout, and remembers the
// answer in the cache.
func chooseAccel(ctx context.Context, cfg Config, k kernels.Kernel, initrd string) string {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg"
	}
	f.Close()
	key := probeKey(k)
	path := filepath.Join(cfg.CacheDir, "accel-"+key)
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b))
	}
	probe := cfg
	probe.Timeout, probe.Stdout, probe.Stderr = kvmProbeTimeout, io.Discard, io.Discard
	probe.Shares = nil
	accel := "tcg"
	if res, err := boot(ctx, probe, k, initrd, "kvm", []string{"true"}); err == nil && res.ExitCode == 0 {
		accel = "kvm"
	}
	if ctx.Err() != nil {
		return accel // interrupted: decide again next time
	}
	cfg.Logf("KVM probe: a stock kernel %s under KVM here; using %s from now on",
		map[bool]string{true: "boots", false: "does not boot"}[accel == "kvm"], accel)
	os.MkdirAll(cfg.CacheDir, 0o755)
	os.WriteFile(path, []byte(accel+"\n"), 0o644)
	return accel
}

// probeKey names the machine, QEMU and kernel a probe result holds for.
func probeKey(k kernels.Kernel) string {
	var u unix.Utsname
	unix.Uname(&u)
	h := sha256.New()
	h.Write(u.Release[:])
	h.Write([]byte(k.Release))
	if qemu, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		if fi, err := os.Stat(qemu); err == nil {
			h.Write([]byte(fi.ModTime().String()))
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
