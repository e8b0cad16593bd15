package vm

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

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
