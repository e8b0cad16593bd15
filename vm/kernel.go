package vm

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Kernel is a kernel image and the modules that belong to it.
type Kernel struct {
	Release string // as uname -r prints it in the guest
	Image   string // bzImage (vmlinuz)
	Modules string // /lib/modules/RELEASE
}

// InstalledKernels lists the kernels under boot that have a modules
// directory under modules, newest first.
func InstalledKernels(boot, modules string) ([]Kernel, error) {
	images, err := filepath.Glob(filepath.Join(boot, "vmlinuz-*"))
	if err != nil {
		return nil, err
	}
	var ks []Kernel
	for _, img := range images {
		rel := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		mod := filepath.Join(modules, rel)
		if _, err := os.Stat(filepath.Join(mod, "modules.dep")); err != nil {
			continue
		}
		ks = append(ks, Kernel{Release: rel, Image: img, Modules: mod})
	}
	sort.Slice(ks, func(i, j int) bool { return CompareReleases(ks[i].Release, ks[j].Release) > 0 })
	return ks, nil
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

// FindKernel resolves spec: "" is the newest installed kernel, a release
// (6.1.0-56-amd64) is that installed kernel, and a path is a bzImage whose
// modules are in modules (required then).
func FindKernel(spec, modules string) (Kernel, error) {
	if strings.ContainsRune(spec, '/') {
		if modules == "" {
			return Kernel{}, fmt.Errorf("vm: kernel image %s needs a modules directory (--modules)", spec)
		}
		if _, err := os.Stat(spec); err != nil {
			return Kernel{}, fmt.Errorf("vm: kernel image: %w", err)
		}
		if _, err := os.Stat(filepath.Join(modules, "modules.dep")); err != nil {
			return Kernel{}, fmt.Errorf("vm: modules directory %s has no modules.dep (run depmod): %w", modules, err)
		}
		return Kernel{Release: filepath.Base(modules), Image: spec, Modules: modules}, nil
	}
	ks, err := InstalledKernels("/boot", "/lib/modules")
	if err != nil {
		return Kernel{}, err
	}
	if len(ks) == 0 {
		return Kernel{}, fmt.Errorf("vm: no kernel installed under /boot with modules under /lib/modules; install one with: apt-get install linux-image-amd64")
	}
	if spec == "" {
		return ks[0], nil
	}
	var names []string
	for _, k := range ks {
		if k.Release == spec {
			return k, nil
		}
		names = append(names, k.Release)
	}
	return Kernel{}, fmt.Errorf("vm: kernel %q is not installed; installed: %s", spec, strings.Join(names, ", "))
}

// ModuleDeps reads modules.dep and modules.builtin of a modules directory.
type ModuleDeps struct {
	dir     string
	deps    map[string][]string // path -> dependency paths, as listed
	byName  map[string]string   // module name -> path
	builtin map[string]bool
}

// ModuleName is a module's name as modprobe knows it: file name without
// .ko and compression suffix, with dashes as underscores.
func ModuleName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// ReadModuleDeps parses dir/modules.dep and dir/modules.builtin.
func ReadModuleDeps(dir string) (*ModuleDeps, error) {
	md := &ModuleDeps{dir: dir, deps: map[string][]string{}, byName: map[string]string{}, builtin: map[string]bool{}}
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		md.deps[mod] = strings.Fields(rest)
		md.byName[ModuleName(mod)] = mod
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("vm: read modules.dep: %w", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			md.builtin[ModuleName(l)] = true
		}
	}
	return md, nil
}

// LoadOrder returns the module files (relative to the modules directory)
// to load, dependencies first and each once, so that names are available.
// Built-in modules are left out; an unknown module is an error.
func (md *ModuleDeps) LoadOrder(names ...string) ([]string, error) {
	var order []string
	seen := map[string]bool{}
	var visit func(path string)
	visit = func(path string) {
		if seen[path] {
			return
		}
		seen[path] = true
		deps := md.deps[path]
		// modules.dep lists dependencies so that loading them from last
		// to first satisfies each before its users.
		for i := len(deps) - 1; i >= 0; i-- {
			visit(deps[i])
		}
		order = append(order, path)
	}
	for _, n := range names {
		n = strings.ReplaceAll(n, "-", "_")
		if md.builtin[n] {
			continue
		}
		path, ok := md.byName[n]
		if !ok {
			return nil, fmt.Errorf("vm: module %s is neither in %s/modules.dep nor built in", n, md.dir)
		}
		visit(path)
	}
	return order, nil
}
