package kmod

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Ubuntu fetches linux-source-X.Y.Z at the kernel image package's version
// from the archive's pool.
type Ubuntu struct{}

// Name implements Provider.
func (Ubuntu) Name() string { return "ubuntu" }

var ubuntuRelease = regexp.MustCompile(`^(\d+\.\d+\.\d+)-(\d+)-[a-z0-9]+$`)

// UbuntuURL maps a release (5.15.0-91-generic) and its image package
// version (5.15.0-91.101) to the linux-source package in the pool.
func UbuntuURL(mirror, rel, version string) (string, error) {
	m := ubuntuRelease.FindStringSubmatch(rel)
	if m == nil {
		return "", fmt.Errorf("kmod: %q is not an Ubuntu kernel release (like 5.15.0-91-generic)", rel)
	}
	if !strings.HasPrefix(version, m[1]+"-"+m[2]+".") {
		return "", fmt.Errorf("kmod: package version %q does not belong to release %s (want %s-%s.N)", version, rel, m[1], m[2])
	}
	pkg := "linux-source-" + m[1]
	return fmt.Sprintf("%s/pool/main/l/linux/%s_%s_all.deb", mirror, pkg, version), nil
}

// Fetch implements Provider.
func (Ubuntu) Fetch(ctx context.Context, env *Env, t *Target) (*Source, error) {
	version, err := imageVersion(ctx, env, t.Release)
	if err != nil {
		return nil, err
	}
	url, err := UbuntuURL(env.mirror("ubuntu", "http://archive.ubuntu.com/ubuntu"), t.Release, version)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(env.CacheDir, "src", "ubuntu_"+version)
	if !isComplete(dir) {
		deb := filepath.Join(env.CacheDir, "debs", filepath.Base(url))
		// The pool publishes no per-file hash beside the file; apt's
		// signed indexes do, and Ubuntu hosts check those when apt
		// fetches. Here the download is taken as served.
		if err := download(ctx, env, url, deb, ""); err != nil {
			return nil, err
		}
		if err := unpackDebSource(ctx, env, deb, dir); err != nil {
			return nil, err
		}
	}
	top, err := findTreeTop(dir)
	if err != nil {
		return nil, err
	}
	return &Source{Dir: top, What: "ubuntu linux-source " + version, Symvers: installedSymvers(t.Release)}, nil
}

// unpackDebSource unpacks a linux-source .deb: the package holds a tarball
// of the tree under /usr/src, which is unpacked into dir.
func unpackDebSource(ctx context.Context, env *Env, deb, dir string) error {
	tmp := dir + ".deb"
	os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	if err := env.Run(ctx, "", nil, nil, "dpkg-deb", "-x", deb, tmp); err != nil {
		return fmt.Errorf("kmod: unpack %s: %w", deb, err)
	}
	var tarball string
	filepath.Walk(filepath.Join(tmp, "usr/src"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.Contains(filepath.Base(p), ".tar") {
			tarball = p
		}
		return nil
	})
	if tarball == "" {
		return fmt.Errorf("kmod: %s has no source tarball under /usr/src", deb)
	}
	return untar(ctx, env, tarball, dir)
}

// untar unpacks a (compressed) tarball into dir and marks it complete.
func untar(ctx context.Context, env *Env, tarball, dir string) error {
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := env.Run(ctx, "", nil, nil, "tar", "-xf", tarball, "-C", dir); err != nil {
		return fmt.Errorf("kmod: unpack %s: %w", filepath.Base(tarball), err)
	}
	return markComplete(dir)
}

func installedSymvers(rel string) string {
	for _, p := range []string{
		"/usr/src/linux-headers-" + rel + "/Module.symvers",
		"/usr/src/kernels/" + rel + "/Module.symvers",
		"/lib/modules/" + rel + "/build/Module.symvers",
	} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// RHEL fetches the kernel's src.rpm from the CentOS vault (EL7) or the
// Rocky Linux vault (EL8, EL9), as in the classic CentOS 7 recipe.
type RHEL struct{}

// Name implements Provider.
func (RHEL) Name() string { return "rhel" }

// el7Points maps EL7 GA kernel builds to the point release that shipped
// them, and so to the vault directory.
var el7Points = []struct {
	build int
	dir   string
}{
	{123, "7.0.1406"}, {229, "7.1.1503"}, {327, "7.2.1511"}, {514, "7.3.1611"}, {693, "7.4.1708"},
	{862, "7.5.1804"}, {957, "7.6.1810"}, {1062, "7.7.1908"}, {1127, "7.8.2003"}, {1160, "7.9.2009"},
}

// el8Minor and el9Minor map GA kernel builds to minor releases.
var el8Minor = []int{80, 147, 193, 240, 305, 348, 372, 425, 477, 513, 553}
var el9Minor = []int{70, 162, 284, 362, 427, 503, 570}

var rhelRelease = regexp.MustCompile(`^(\d+\.\d+\.\d+)-(\d+)((?:\.\d+)*)\.el(\d+)(?:_(\d+))?(?:\.[a-z0-9_]+)?$`)

// RHELURL maps a release (3.10.0-1160.el7.x86_64, 4.18.0-513.5.1.el8_9.x86_64)
// to its src.rpm in a vault.
func RHELURL(centos, rocky, rel string) (string, error) {
	m := rhelRelease.FindStringSubmatch(rel)
	if m == nil {
		return "", fmt.Errorf("kmod: %q is not an Enterprise Linux kernel release (like 3.10.0-1160.el7.x86_64)", rel)
	}
	build, _ := strconv.Atoi(m[2])
	nvr := fmt.Sprintf("kernel-%s-%s%s.el%s", m[1], m[2], m[3], m[4])
	if m[5] != "" {
		nvr += "_" + m[5]
	}
	switch m[4] {
	case "7":
		point := ""
		for _, p := range el7Points {
			if build >= p.build {
				point = p.dir
			}
		}
		if point == "" {
			return "", fmt.Errorf("kmod: EL7 kernel build %d predates 7.0", build)
		}
		repo := "os"
		if m[3] != "" {
			repo = "updates"
		}
		return fmt.Sprintf("%s/%s/%s/Source/SPackages/%s.src.rpm", centos, point, repo, nvr), nil
	case "8", "9":
		minor := m[5]
		if minor == "" {
			table := el8Minor
			if m[4] == "9" {
				table = el9Minor
			}
			for i, b := range table {
				if build >= b {
					minor = strconv.Itoa(i)
				}
			}
		}
		if minor == "" {
			return "", fmt.Errorf("kmod: cannot tell the EL%s minor release of kernel build %d", m[4], build)
		}
		return fmt.Sprintf("%s/%s.%s/BaseOS/source/tree/Packages/k/%s.src.rpm", rocky, m[4], minor, nvr), nil
	}
	return "", fmt.Errorf("kmod: EL%s kernels are not supported", m[4])
}

// Fetch implements Provider.
func (RHEL) Fetch(ctx context.Context, env *Env, t *Target) (*Source, error) {
	url, err := RHELURL(env.mirror("centos", "https://vault.centos.org"), env.mirror("rocky", "https://dl.rockylinux.org/vault/rocky"), t.Release)
	if err != nil {
		return nil, err
	}
	return fetchSRPM(ctx, env, t, url, "rhel")
}

// Fedora fetches the kernel's src.rpm from Koji.
type Fedora struct{}

// Name implements Provider.
func (Fedora) Name() string { return "fedora" }

var fedoraRelease = regexp.MustCompile(`^(\d+\.\d+\.\d+)-(\d+\.fc\d+)(?:\.[a-z0-9_]+)?$`)

// FedoraURL maps a release (6.5.6-300.fc39.x86_64) to its src.rpm on Koji.
func FedoraURL(koji, rel string) (string, error) {
	m := fedoraRelease.FindStringSubmatch(rel)
	if m == nil {
		return "", fmt.Errorf("kmod: %q is not a Fedora kernel release (like 6.5.6-300.fc39.x86_64)", rel)
	}
	return fmt.Sprintf("%s/packages/kernel/%s/%s/src/kernel-%s-%s.src.rpm", koji, m[1], m[2], m[1], m[2]), nil
}

// Fetch implements Provider.
func (Fedora) Fetch(ctx context.Context, env *Env, t *Target) (*Source, error) {
	url, err := FedoraURL(env.mirror("fedora", "https://kojipkgs.fedoraproject.org"), t.Release)
	if err != nil {
		return nil, err
	}
	return fetchSRPM(ctx, env, t, url, "fedora")
}

// fetchSRPM downloads a kernel src.rpm, checks its payload digest,
// unpacks the linux-*.tar.* it carries and applies the distribution's
// patch-*-redhat.patch if there is one.
func fetchSRPM(ctx context.Context, env *Env, t *Target, url, name string) (*Source, error) {
	base := strings.TrimSuffix(filepath.Base(url), ".src.rpm")
	dir := filepath.Join(env.CacheDir, "src", base)
	if !isComplete(dir) {
		rpm := filepath.Join(env.CacheDir, "rpms", filepath.Base(url))
		if err := download(ctx, env, url, rpm, ""); err != nil {
			return nil, err
		}
		files, err := UnpackSRPM(ctx, rpm, filepath.Join(env.CacheDir, "rpms", base))
		if err != nil {
			return nil, err
		}
		var tarball, patch string
		for _, f := range files {
			b := filepath.Base(f)
			switch {
			case strings.HasPrefix(b, "linux-") && strings.Contains(b, ".tar"):
				tarball = f
			case strings.HasPrefix(b, "patch-") && strings.HasSuffix(b, "-redhat.patch"):
				patch = f
			}
		}
		if tarball == "" {
			return nil, fmt.Errorf("kmod: %s has no linux-*.tar.* source tarball", filepath.Base(url))
		}
		if err := untar(ctx, env, tarball, dir); err != nil {
			return nil, err
		}
		if patch != "" {
			top, err := findTreeTop(dir)
			if err != nil {
				return nil, err
			}
			if err := env.Run(ctx, top, nil, nil, "patch", "-p1", "-s", "-i", patch); err != nil {
				return nil, fmt.Errorf("kmod: apply %s: %w", filepath.Base(patch), err)
			}
		}
	}
	top, err := findTreeTop(dir)
	if err != nil {
		return nil, err
	}
	return &Source{Dir: top, What: name + " " + base, Symvers: installedSymvers(t.Release)}, nil
}

// KernelOrg fetches a kernel.org release tarball and checks it against the
// published sha256sums.
type KernelOrg struct{}

// Name implements Provider.
func (KernelOrg) Name() string { return "kernel.org" }

var kernelOrgRelease = regexp.MustCompile(`^(\d+)\.(\d+)(?:\.(\d+))?$`)

// KernelOrgRelease reports whether rel looks like a kernel.org release.
func KernelOrgRelease(rel string) bool { return kernelOrgRelease.MatchString(rel) }

// KernelOrgURLs maps a release (6.6.8) to its tarball and checksum list.
func KernelOrgURLs(cdn, rel string) (tarball, sums string, err error) {
	m := kernelOrgRelease.FindStringSubmatch(rel)
	if m == nil {
		return "", "", fmt.Errorf("kmod: %q is not a kernel.org release (like 6.6.8)", rel)
	}
	series := "v" + m[1] + ".x"
	if m[1] == "2" {
		series = "v2." + m[2] // 2.6.x lives in v2.6
	}
	dir := cdn + "/pub/linux/kernel/" + series
	return dir + "/linux-" + rel + ".tar.xz", dir + "/sha256sums.asc", nil
}

// Fetch implements Provider.
func (KernelOrg) Fetch(ctx context.Context, env *Env, t *Target) (*Source, error) {
	tarURL, sumsURL, err := KernelOrgURLs(env.mirror("kernel.org", "https://cdn.kernel.org"), t.Release)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(env.CacheDir, "src", "linux-"+t.Release)
	if !isComplete(dir) {
		sums := filepath.Join(env.CacheDir, "tarballs", "sha256sums-"+t.Release)
		if err := download(ctx, env, sumsURL, sums, ""); err != nil {
			return nil, err
		}
		want, err := sumFor(sums, filepath.Base(tarURL))
		os.Remove(sums)
		if err != nil {
			return nil, err
		}
		tarball := filepath.Join(env.CacheDir, "tarballs", filepath.Base(tarURL))
		if err := download(ctx, env, tarURL, tarball, want); err != nil {
			return nil, err
		}
		if err := untar(ctx, env, tarball, dir); err != nil {
			return nil, err
		}
	}
	top, err := findTreeTop(dir)
	if err != nil {
		return nil, err
	}
	return &Source{Dir: top, What: "kernel.org linux-" + t.Release, Symvers: installedSymvers(t.Release)}, nil
}

// sumFor finds name's hash in a sha256sums file.
func sumFor(path, name string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && fields[1] == name && len(fields[0]) == 64 {
			return fields[0], nil
		}
	}
	return "", fmt.Errorf("kmod: %s lists no sha256 for %s; refusing an unchecked download", filepath.Base(path), name)
}
