package kernels

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Kernel is a kernel image and the files that belong to it.
type Kernel struct {
	Release string // as uname -r prints it in the guest
	Image   string // bzImage (vmlinuz)
	Modules string // its modules directory (/lib/modules/RELEASE, or a fetched tree's)
	Config  string // its config, "" if none was found
	Symvers string // Module.symvers, "" if none was found
	// Root is what the kernel's files are relative to: "/" for an
	// installed kernel, the unpacked tree for a fetched one.
	Root string
	// Origin says where it came from: "installed", or the suite it was
	// fetched from (debian:sid).
	Origin    string
	Version   string    // package version, where known
	SourceDeb string    // fetched: the checked linux-source .deb, "" if not fetched
	Fetched   time.Time // fetched: when
}

// IsFetched reports whether k lives in the cache rather than on the host.
func (k Kernel) IsFetched() bool { return strings.HasPrefix(k.Origin, "debian:") }

// NBD says which nbd.ko k has: the one nbdlab built (updates/), the
// distribution's, or none.
func (k Kernel) NBD() string {
	ours, distro := NBDModules(k.Modules)
	switch {
	case ours != "":
		return "built by nbdlab"
	case distro != "":
		return "distribution's"
	}
	return "none"
}

// NBDModules returns the nbd.ko nbdlab installed under a modules
// directory (updates/) and the distribution's own, each "" when absent,
// compressed or not.
func NBDModules(modDir string) (ours, distro string) {
	var names []string
	for _, ext := range []string{"", ".xz", ".zst"} {
		names = append(names, "nbd.ko"+ext)
	}
	find := func(dir string) string {
		for _, n := range names {
			if p := filepath.Join(modDir, dir, n); firstExisting(p) != "" {
				return p
			}
		}
		return ""
	}
	return find("updates"), find("kernel/drivers/block")
}

// CompareReleases orders kernel release strings by their numbers:
// 6.12.117+deb12-amd64 is newer than 6.1.0-56-amd64.
func CompareReleases(a, b string) int {
	na, nb := releaseNumbers(a), releaseNumbers(b)
	for i := 0; i < len(na) && i < len(nb); i++ {
		if na[i] != nb[i] {
			if na[i] < nb[i] {
				return -1
			}
			return 1
		}
	}
	return len(na) - len(nb)
}

func releaseNumbers(s string) []int {
	var out []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r < '0' || r > '9' }) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}

func sortNewestFirst(ks []Kernel) {
	sort.SliceStable(ks, func(i, j int) bool { return CompareReleases(ks[i].Release, ks[j].Release) > 0 })
}

// firstExisting returns the first of paths that exists, or "".
func firstExisting(paths ...string) string {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// describe completes k's paths from its root, whichever of Debian's two
// layouts it has: /boot/vmlinuz-R with /lib/modules/R, or everything
// under /usr/lib/modules/R.
func describe(root, rel string) (Kernel, error) {
	k := Kernel{Release: rel, Root: root}
	k.Modules = firstExisting(filepath.Join(root, "lib/modules", rel), filepath.Join(root, "usr/lib/modules", rel))
	k.Image = firstExisting(filepath.Join(root, "boot", "vmlinuz-"+rel), filepath.Join(root, "usr/lib/modules", rel, "vmlinuz"))
	if k.Modules == "" || k.Image == "" {
		return k, fmt.Errorf("kernels: %s under %s: no image (boot/vmlinuz-%s or usr/lib/modules/%s/vmlinuz) or no modules directory", rel, root, rel, rel)
	}
	k.Config = firstExisting(filepath.Join(root, "boot", "config-"+rel), filepath.Join(root, "usr/lib/modules", rel, "config"))
	k.Symvers = firstExisting(filepath.Join(root, "usr/src", "linux-headers-"+rel, "Module.symvers"),
		filepath.Join(k.Modules, "build/Module.symvers"))
	return k, nil
}

// Installed lists the kernels installed under root ("/" normally) that
// have an image and a modules directory with modules.dep, newest first.
func Installed(root string) ([]Kernel, error) {
	var rels []string
	seen := map[string]bool{}
	add := func(rel string) {
		if !seen[rel] {
			seen[rel] = true
			rels = append(rels, rel)
		}
	}
	images, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if err != nil {
		return nil, err
	}
	for _, img := range images {
		add(strings.TrimPrefix(filepath.Base(img), "vmlinuz-"))
	}
	images, _ = filepath.Glob(filepath.Join(root, "usr/lib/modules", "*", "vmlinuz"))
	for _, img := range images {
		add(filepath.Base(filepath.Dir(img)))
	}
	var ks []Kernel
	for _, rel := range rels {
		k, err := describe(root, rel)
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(k.Modules, "modules.dep")); err != nil {
			continue
		}
		k.Origin = "installed"
		ks = append(ks, k)
	}
	sortNewestFirst(ks)
	return ks, nil
}

// InstalledVersion is the version of the Debian package an installed
// kernel came from (linux-image-RELEASE, or its -unsigned twin), as
// dpkg knows it; "" where dpkg does not.
func InstalledVersion(release string) string {
	for _, pkg := range []string{"linux-image-" + release, "linux-image-" + release + "-unsigned"} {
		out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", pkg).Output()
		if v := strings.TrimSpace(string(out)); err == nil && v != "" {
			return v
		}
	}
	return ""
}
