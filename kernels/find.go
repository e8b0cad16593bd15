package kernels

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// All returns the installed kernels and the fetched ones, newest first; a
// release both installed and fetched is listed as installed.
func All(store Store) ([]Kernel, error) {
	inst, err := Installed("/")
	if err != nil {
		return nil, err
	}
	fetched, err := store.List()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, k := range inst {
		seen[k.Release] = true
	}
	for _, k := range fetched {
		if !seen[k.Release] {
			inst = append(inst, k)
		}
	}
	sortNewestFirst(inst)
	return inst, nil
}

// Find resolves what follows --kernel: "" is the newest installed kernel;
// a release is an installed or fetched kernel of that release;
// debian:SUITE is the newest kernel fetched from SUITE, debian:SUITE/R
// that release; a path is a bzImage whose modules are in modules
// (required then). Find fetches nothing.
func Find(spec, modules string, store Store) (Kernel, error) {
	if strings.ContainsRune(spec, '/') && !IsSpec(spec) {
		return fromPath(spec, modules)
	}
	all, err := All(store)
	if err != nil {
		return Kernel{}, err
	}
	if spec == "" {
		for _, k := range all {
			if !k.IsFetched() {
				return k, nil
			}
		}
		return Kernel{}, fmt.Errorf("kernels: no kernel installed under /boot or /usr/lib/modules; install one (apt-get install linux-image-amd64) or fetch one (nbdlab kernel fetch debian:bookworm)")
	}
	var names []string
	if IsSpec(spec) {
		sp, err := ParseSpec(spec)
		if err != nil {
			return Kernel{}, err
		}
		for _, k := range all {
			if k.Origin == "debian:"+sp.Suite && (sp.Release == "" || k.Release == sp.Release) {
				return k, nil
			}
		}
		return Kernel{}, fmt.Errorf("kernels: no kernel fetched from %s yet; fetch it with: nbdlab kernel fetch %s", spec, spec)
	}
	for _, k := range all {
		if k.Release == spec {
			return k, nil
		}
		names = append(names, k.Release)
	}
	return Kernel{}, fmt.Errorf("kernels: kernel %q is neither installed nor fetched; there are: %s (nbdlab kernel list; nbdlab kernel fetch debian:SUITE/RELEASE)",
		spec, strings.Join(names, ", "))
}

func fromPath(image, modules string) (Kernel, error) {
	if modules == "" {
		return Kernel{}, fmt.Errorf("kernels: kernel image %s needs a modules directory (--modules)", image)
	}
	if _, err := os.Stat(image); err != nil {
		return Kernel{}, fmt.Errorf("kernels: kernel image: %w", err)
	}
	if _, err := os.Stat(filepath.Join(modules, "modules.dep")); err != nil {
		return Kernel{}, fmt.Errorf("kernels: modules directory %s has no modules.dep (run depmod): %w", modules, err)
	}
	return Kernel{Release: filepath.Base(modules), Image: image, Modules: modules, Origin: "path"}, nil
}
