package kmod

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/nbdlab/nbdlab/debian"
	"github.com/nbdlab/nbdlab/internal/command"
)

// Debian fetches linux-source-X.Y at exactly the version of the kernel's
// image package, and the headers package's Module.symvers, with apt.
type Debian struct{}

// Name implements Provider.
func (Debian) Name() string { return "debian" }

// DebianSourcePackage maps an image package version (6.1.192-2,
// 6.12.117-1~deb12u1) to the source package that carries its tree.
func DebianSourcePackage(version string) (string, error) {
	m := regexp.MustCompile(`^(\d+)\.(\d+)`).FindStringSubmatch(version)
	if m == nil {
		return "", fmt.Errorf("kmod: cannot read an upstream version from package version %q", version)
	}
	return "linux-source-" + m[1] + "." + m[2], nil
}

// imageVersion asks dpkg which version of KVER's image package is installed.
func imageVersion(ctx context.Context, env *Env, rel string) (string, error) {
	var errs []string
	for _, pkg := range []string{"linux-image-" + rel, "linux-image-" + rel + "-unsigned"} {
		v, err := command.Output(ctx, env.Run, "dpkg-query", "-W", "-f", "${Version}", pkg)
		if err == nil && v != "" {
			return v, nil
		}
		errs = append(errs, pkg)
	}
	return "", fmt.Errorf("kmod: none of %s is installed, so the kernel's package version is unknown", strings.Join(errs, ", "))
}

// aptSHA256 returns the SHA256 apt lists for pkg at version.
func aptSHA256(ctx context.Context, env *Env, pkg, version string) (string, error) {
	show, err := command.Output(ctx, env.Run, "apt-cache", "show", pkg+"="+version)
	if err != nil {
		// The lists may be missing on a fresh machine.
		if uerr := env.Run(ctx, "", nil, nil, "apt-get", "update", "-q"); uerr == nil {
			show, err = command.Output(ctx, env.Run, "apt-cache", "show", pkg+"="+version)
		}
	}
	if err != nil {
		avail, _ := command.Output(ctx, env.Run, "apt-cache", "madison", pkg)
		return "", fmt.Errorf("kmod: %s %s is not available from apt (available: %s): %w", pkg, version, oneLine(avail), err)
	}
	for _, l := range strings.Split(show, "\n") {
		if v, ok := strings.CutPrefix(l, "SHA256: "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("kmod: apt lists no SHA256 for %s %s", pkg, version)
}

func oneLine(s string) string {
	if s = strings.Join(strings.Fields(s), " "); s == "" {
		return "none"
	}
	return s
}

// aptDownload fetches pkg=version into dir and checks it against apt's
// SHA256. It returns the .deb's path.
func aptDownload(ctx context.Context, env *Env, dir, pkg, version string) (string, error) {
	sha, err := aptSHA256(ctx, env, pkg, version)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	pattern := filepath.Join(dir, pkg+"_*.deb")
	if debs, _ := filepath.Glob(pattern); len(debs) > 0 {
		for _, d := range debs {
			if got, _ := debian.FileSHA256(d); got == sha {
				return d, nil
			}
		}
	}
	if err := env.Run(ctx, dir, nil, nil, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg+"="+version); err != nil {
		return "", fmt.Errorf("kmod: fetch %s %s: %w", pkg, version, err)
	}
	debs, _ := filepath.Glob(pattern)
	for _, d := range debs {
		if got, _ := debian.FileSHA256(d); got == sha {
			env.Progress("fetched %s %s (sha256 %s… verified)", pkg, version, sha[:12])
			return d, nil
		}
	}
	return "", fmt.Errorf("kmod: fetch %s %s: no downloaded file matches apt's sha256 %s", pkg, version, sha)
}

// Fetch implements Provider.
func (Debian) Fetch(ctx context.Context, env *Env, t *Target) (*Source, error) {
	version, err := imageVersion(ctx, env, t.Release)
	if err != nil {
		return nil, err
	}
	pkg, err := DebianSourcePackage(version)
	if err != nil {
		return nil, err
	}
	srcVersion := version
	if _, err := aptSHA256(ctx, env, pkg, version); err != nil {
		avail, _ := command.Output(ctx, env.Run, "apt-cache", "policy", pkg)
		cand := candidate(avail)
		if !env.Force || cand == "" {
			return nil, fmt.Errorf("%w; refusing a different version, whose nbd.ko might not match %s (force to build from %s %q anyway)",
				err, t.Release, pkg, cand)
		}
		env.Progress("WARNING: %s %s is not available; building from %s (forced)", pkg, version, cand)
		srcVersion = cand
	}
	dir := filepath.Join(env.CacheDir, "src", pkg+"_"+srcVersion)
	what := pkg + " " + srcVersion
	if !isComplete(dir) {
		deb, err := aptDownload(ctx, env, filepath.Join(env.CacheDir, "debs"), pkg, srcVersion)
		if err != nil {
			return nil, err
		}
		os.RemoveAll(dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		inner := "./usr/src/" + pkg + ".tar.xz"
		script := fmt.Sprintf("dpkg-deb --fsys-tarfile %q | tar -xO %q | tar -xJ -C %q", deb, inner, dir)
		if err := env.Run(ctx, "", nil, nil, "bash", "-o", "pipefail", "-c", script); err != nil {
			return nil, fmt.Errorf("kmod: unpack %s: %w", what, err)
		}
		if err := markComplete(dir); err != nil {
			return nil, err
		}
	} else {
		env.Progress("reusing cached %s", dir)
	}
	top, err := findTreeTop(dir)
	if err != nil {
		return nil, err
	}
	symvers, err := debianSymvers(ctx, env, t.Release, version)
	if err != nil {
		return nil, err
	}
	return &Source{Dir: top, What: what, Symvers: symvers}, nil
}

// candidate reads the Candidate line of apt-cache policy.
func candidate(policy string) string {
	for _, l := range strings.Split(policy, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Candidate: "); ok && v != "(none)" {
			return v
		}
	}
	return ""
}

// debianSymvers finds KVER's Module.symvers: from installed headers, or
// from the headers package fetched into the cache.
func debianSymvers(ctx context.Context, env *Env, rel, version string) (string, error) {
	for _, p := range []string{"/usr/src/linux-headers-" + rel + "/Module.symvers", "/lib/modules/" + rel + "/build/Module.symvers"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	dir := filepath.Join(env.CacheDir, "headers", rel+"_"+version)
	out := filepath.Join(dir, "Module.symvers")
	if isComplete(dir) {
		return out, nil
	}
	pkg := "linux-headers-" + rel
	deb, err := aptDownload(ctx, env, filepath.Join(env.CacheDir, "debs"), pkg, version)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	member := "./usr/src/" + pkg + "/Module.symvers"
	script := fmt.Sprintf("dpkg-deb --fsys-tarfile %q | tar -xO %q > %q", deb, member, out)
	if err := env.Run(ctx, "", nil, nil, "bash", "-o", "pipefail", "-c", script); err != nil {
		return "", fmt.Errorf("kmod: Module.symvers from %s %s: %w", pkg, version, err)
	}
	return out, markComplete(dir)
}
