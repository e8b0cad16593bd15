package kmod

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/nbdlab/nbdlab/kernels"
)

// Target is what inspection found out about the kernel to build for.
type Target struct {
	Release    string            // KVER
	Running    bool              // KVER is the running kernel
	Distro     string            // debian, ubuntu, rhel, fedora, or "" if unknown
	OSRelease  map[string]string // /etc/os-release
	ConfigPath string            // where the config came from
	Config     map[string]string // CONFIG_X -> y, m, "string", or "" when "is not set"
	Installed  string            // path of an nbd.ko nbdlab installed before, if any
	DistroNBD  string            // path of the distribution's own nbd.ko, if any
}

// ErrNoModules is wrapped when the kernel cannot load modules at all.
var ErrNoModules = errors.New("no loadable module support")

// ErrBuiltIn is wrapped when nbd is built into the kernel.
var ErrBuiltIn = errors.New("nbd is built into the kernel")

// Inspect looks at kernel rel under root ("/" normally) without fetching
// anything. running is the running kernel's release.
func Inspect(root, rel, running string) (*Target, error) {
	t := &Target{Release: rel, Running: rel == running}
	t.OSRelease = readOSRelease(filepath.Join(root, "etc/os-release"))
	t.Distro = DistroOf(t.OSRelease["ID"], t.OSRelease["ID_LIKE"], rel)
	candidates := []string{filepath.Join(root, "boot", "config-"+rel), filepath.Join(root, "usr/lib/modules", rel, "config")}
	if t.Running {
		candidates = append(candidates, filepath.Join(root, "proc/config.gz"))
	}
	candidates = append(candidates,
		filepath.Join(root, "usr/src", "linux-headers-"+rel, ".config"),
		filepath.Join(root, "lib/modules", rel, "build/.config"))
	for _, c := range candidates {
		cfg, err := readConfig(c)
		if err == nil {
			t.ConfigPath, t.Config = c, cfg
			break
		}
	}
	if t.Config == nil {
		return t, fmt.Errorf("kmod: no config for kernel %s: looked at %s; install its image or headers package",
			rel, strings.Join(candidates, ", "))
	}
	if v := t.Config["CONFIG_MODULES"]; v != "y" {
		return t, fmt.Errorf("kmod: kernel %s has %w (CONFIG_MODULES is not set in %s), so it cannot load nbd.ko. "+
			"Build for an installed distribution kernel instead (KVER=RELEASE go run mage.go buildNbd, or nbdlab kmod build --kernel RELEASE) "+
			"and use it in a lab VM: nbdlab vm run --kernel RELEASE -- modprobe nbd", rel, ErrNoModules, t.ConfigPath)
	}
	if t.Config["CONFIG_BLK_DEV_NBD"] == "y" {
		return t, fmt.Errorf("kmod: kernel %s: %w (CONFIG_BLK_DEV_NBD=y in %s); there is nothing to build", rel, ErrBuiltIn, t.ConfigPath)
	}
	t.Installed, t.DistroNBD = kernels.NBDModules(filepath.Join(root, "lib/modules", rel))
	return t, nil
}

// DistroOf names the distribution from os-release's ID and ID_LIKE, or
// failing that from the release string's conventions.
func DistroOf(id, idLike, rel string) string {
	switch {
	case strings.Contains(rel, ".el"):
		return "rhel"
	case strings.Contains(rel, ".fc"):
		return "fedora"
	}
	for _, s := range append([]string{id}, strings.Fields(idLike)...) {
		switch s {
		case "debian", "ubuntu", "fedora":
			return s
		case "rhel", "centos", "rocky", "almalinux":
			return "rhel"
		}
	}
	switch {
	case strings.HasSuffix(rel, "-generic") || strings.HasSuffix(rel, "-lowlatency"):
		return "ubuntu"
	case strings.Contains(rel, "+deb") || strings.HasSuffix(rel, "-amd64") || strings.HasSuffix(rel, "-arm64"):
		return "debian"
	}
	return ""
}

func readOSRelease(path string) map[string]string {
	m := map[string]string{}
	b, err := os.ReadFile(path)
	if err != nil {
		return m
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), "=")
		if ok {
			m[k] = strings.Trim(v, `"'`)
		}
	}
	return m
}

// readConfig parses a kernel .config, gzipped or not.
func readConfig(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r io.Reader = bytes.NewReader(b)
	if len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("kmod: %s: %w", path, err)
		}
		r = zr
	}
	cfg := map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if name, ok := strings.CutPrefix(l, "# "); ok && strings.HasSuffix(name, " is not set") {
			cfg[strings.TrimSuffix(name, " is not set")] = ""
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok && strings.HasPrefix(k, "CONFIG_") {
			cfg[k] = v
		}
	}
	if len(cfg) == 0 {
		return nil, fmt.Errorf("kmod: %s has no CONFIG_ lines", path)
	}
	return cfg, sc.Err()
}
