package kmod

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ulikunitz/xz"
)

// openModule opens a module file as ELF, decompressing a .ko.xz.
func openModule(path string) (*elf.File, error) {
	if !strings.HasSuffix(path, ".xz") {
		return elf.Open(path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := xz.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	b, err := io.ReadAll(io.LimitReader(zr, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return elf.NewFile(bytes.NewReader(b))
}

// moduleShape is what must agree between two builds of a module for the
// same kernel when there are no symbol CRCs to compare.
type moduleShape struct {
	imports    []string // undefined symbols, sorted
	thisModule uint64   // size of .gnu.linkonce.this_module: struct module
}

func readShape(path string) (moduleShape, error) {
	f, err := openModule(path)
	if err != nil {
		return moduleShape{}, fmt.Errorf("kmod: %w", err)
	}
	defer f.Close()
	var s moduleShape
	sec := f.Section(".gnu.linkonce.this_module")
	if sec == nil {
		return s, fmt.Errorf("kmod: %s has no .gnu.linkonce.this_module section", path)
	}
	s.thisModule = sec.Size
	syms, err := f.Symbols()
	if err != nil {
		return s, fmt.Errorf("kmod: %s: %w", path, err)
	}
	for _, sym := range syms {
		if sym.Section == elf.SHN_UNDEF && sym.Name != "" {
			s.imports = append(s.imports, sym.Name)
		}
	}
	sort.Strings(s.imports)
	return s, nil
}

// CheckShape compares a module built here with the distribution's own
// build of it (distro, maybe .ko.xz) and with the kernel's exports
// (symvers, may be ""): struct module must have the distribution's size,
// and every symbol the module imports must be exported by the kernel or
// imported by the distribution's module too.
func CheckShape(ko, distro, symvers string) (string, error) {
	ours, err := readShape(ko)
	if err != nil {
		return "", err
	}
	theirs, err := readShape(distro)
	if err != nil {
		return "", err
	}
	if ours.thisModule != theirs.thisModule {
		return "", fmt.Errorf("kmod: struct module is %d bytes in %s but %d in the distribution's %s: the build's config or compiler does not match the kernel",
			ours.thisModule, filepath.Base(ko), theirs.thisModule, distro)
	}
	known := map[string]bool{}
	for _, s := range theirs.imports {
		known[s] = true
	}
	if symvers != "" {
		exports, err := ReadSymvers(symvers)
		if err != nil {
			return "", err
		}
		for s := range exports {
			known[s] = true
		}
	}
	var unknown []string
	for _, s := range ours.imports {
		if !known[s] {
			unknown = append(unknown, s)
		}
	}
	if len(unknown) > 0 {
		return "", fmt.Errorf("kmod: %s imports %d symbols neither the kernel exports nor the distribution's nbd.ko uses: %s",
			filepath.Base(ko), len(unknown), strings.Join(unknown, ", "))
	}
	return fmt.Sprintf("struct module %d bytes as in the distribution's nbd.ko; all %d imported symbols known", ours.thisModule, len(ours.imports)), nil
}
