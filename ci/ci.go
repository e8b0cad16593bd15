// Package ci holds what the project's build targets do beyond calling the
// other packages: installing the Debian packages the tests and benchmarks
// use, and running the whole suite the way CI runs it.
//
// Deps needs root (it runs apt-get). Test runs "go test" on every package;
// with CI=true in the environment a test that lacks a tool fails instead of
// skipping.
package ci

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/internal/command"
)

// Packages returns the Debian packages the suite and the benchmarks use.
func Packages() []string {
	return []string{
		// Peers and clients of the NBD server.
		"nbdkit", "libnbd-bin", "python3-libnbd", "qemu-utils", "fio",
		"nbd-server", "nbd-client",
		// Lab VMs: QEMU and the Debian kernels they boot.
		"qemu-system-x86", "linux-image-amd64", "linux-image-6.12-amd64",
		// Building nbd.ko from a distribution's kernel source.
		"build-essential", "bc", "flex", "bison", "libelf-dev", "libssl-dev", "dwarves", "xz-utils", "patch",
		// Fetching kernels from the archive: its keyring, gpgv, and gpg for
		// the test archive's key.
		"debian-archive-keyring", "gpgv", "gnupg",
		// Namespaces and the tools used inside the guests.
		"iproute2", "kmod", "fdisk", "e2fsprogs", "util-linux", "mdadm",
		// The guests run systemd-udevd from the host's root, as a booted
		// system does (vm.Config.NoUdev to go without).
		"udev",
		// The NFS side of the NBD-against-NFS benchmark.
		"nfs-kernel-server", "rpcbind", "nfs-common", "tar",
		// Service integration: socket activation and unit checks.
		"systemd",
		// Checking the generated man page (nbdlab docs man).
		"groff-base",
		// Load beside the kernel suite (conformStress).
		"stress-ng",
	}
}

// Missing returns the packages of pkgs that dpkg does not list as installed.
func Missing(ctx context.Context, run command.Runner, pkgs []string) ([]string, error) {
	var out bytes.Buffer
	args := append([]string{"-W", "-f", "${Package} ${db:Status-Abbrev}\n"}, pkgs...)
	// dpkg-query exits 1 when some package is unknown; its output still
	// lists the known ones.
	_ = run(ctx, "", &out, io.Discard, "dpkg-query", args...)
	installed := map[string]bool{}
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && strings.HasPrefix(f[1], "ii") {
			installed[strings.SplitN(f[0], ":", 2)[0]] = true
		}
	}
	var missing []string
	for _, p := range pkgs {
		if !installed[p] {
			missing = append(missing, p)
		}
	}
	return missing, nil
}

// Deps installs whichever of pkgs are missing. With everything installed it
// only asks dpkg, which takes well under a second.
func Deps(ctx context.Context, run command.Runner, w io.Writer, pkgs []string) error {
	missing, err := Missing(ctx, run, pkgs)
	if err != nil {
		return err
	}
	if len(missing) == 0 {
		fmt.Fprintf(w, "deps: all %d Debian packages are installed\n", len(pkgs))
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("deps: missing Debian packages %s; run as root, or install them with: apt-get install %s",
			strings.Join(missing, " "), strings.Join(missing, " "))
	}
	start := time.Now()
	fmt.Fprintf(w, "deps: installing %s\n", strings.Join(missing, " "))
	if err := run(ctx, "", w, w, "apt-get", "update", "-q"); err != nil {
		return fmt.Errorf("deps: %w", err)
	}
	args := append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...)
	if err := run(ctx, "", w, w, "apt-get", args...); err != nil {
		return fmt.Errorf("deps: %w", err)
	}
	fmt.Fprintf(w, "deps: installed %d packages in %s\n", len(missing), time.Since(start).Round(time.Second))
	return nil
}
