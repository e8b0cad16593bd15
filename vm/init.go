package vm

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nbdlab/nbdlab/cpio"
)

// libDirs are where the dynamic loader of a Debian amd64 system looks
// for libraries when there is no ld.so.cache, as in the initramfs.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// initFiles returns the initramfs entries that make init runnable as the
// guest's /init: the executable itself and, when it is dynamically linked
// (as go install makes it where cgo is on), its interpreter and every
// library it needs, at the paths the loader looks for them.
func initFiles(init string) ([]cpio.File, error) {
	data, err := os.ReadFile(init)
	if err != nil {
		return nil, fmt.Errorf("vm: read guest init: %w", err)
	}
	files := []cpio.File{{Name: "init", Mode: cpio.ModeRegular | 0o755, Data: data}}
	interp, needed, err := elfDeps(init)
	if err != nil {
		return nil, fmt.Errorf("vm: guest init %s: %w", init, err)
	}
	if interp == "" {
		return files, nil
	}
	paths := []string{interp}
	seen := map[string]bool{interp: true}
	for len(needed) > 0 {
		lib := needed[0]
		needed = needed[1:]
		path, err := findLib(lib)
		if err != nil {
			return nil, fmt.Errorf("vm: guest init %s needs %s: %w", init, lib, err)
		}
		if seen[path] {
			continue
		}
		seen[path] = true
		paths = append(paths, path)
		_, more, err := elfDeps(path)
		if err != nil {
			return nil, fmt.Errorf("vm: guest init %s: library %s: %w", init, path, err)
		}
		needed = append(needed, more...)
	}
	dirs := map[string]bool{}
	for _, p := range paths {
		b, err := os.ReadFile(p) // through symlinks: the file itself
		if err != nil {
			return nil, fmt.Errorf("vm: guest init %s: %w", init, err)
		}
		name := strings.TrimPrefix(p, "/")
		var parents []string
		for d := filepath.Dir(name); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			files = append(files, cpio.File{Name: d, Mode: cpio.ModeDir | 0o755})
		}
		files = append(files, cpio.File{Name: name, Mode: cpio.ModeRegular | 0o755, Data: b})
	}
	return files, nil
}

// elfDeps reads an ELF file's interpreter (empty when static) and the
// libraries it names as needed.
func elfDeps(path string) (interp string, needed []string, err error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return "", nil, fmt.Errorf("read interpreter: %w", err)
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	needed, err = f.ImportedLibraries()
	if err != nil {
		return "", nil, err
	}
	return interp, needed, nil
}

func findLib(name string) (string, error) {
	if strings.ContainsRune(name, '/') {
		return name, nil
	}
	for _, d := range libDirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in %s", strings.Join(libDirs, ", "))
}

// CheckInit fails unless path can be a lab VM's init: an ELF executable,
// static, or dynamic with its interpreter and libraries on this host.
func CheckInit(path string) error {
	_, err := initFiles(path)
	return err
}
