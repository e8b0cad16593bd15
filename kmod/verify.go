package kmod

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ModInfo reads the .modinfo key=value pairs of a module file.
func ModInfo(path string) (map[string]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kmod: %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("kmod: %s has no .modinfo section; not a kernel module", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("kmod: %s: %w", path, err)
	}
	info := map[string]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			info[k] = v
		}
	}
	return info, nil
}

// ModVersions reads the symbol CRCs a module was built against (its
// __versions section). It returns nil if the module has none.
func ModVersions(path string) (map[string]uint32, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kmod: %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section("__versions")
	if sec == nil {
		return nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	// struct modversion_info { unsigned long crc; char name[64 - sizeof(long)]; }
	const entry = 64
	out := map[string]uint32{}
	for off := 0; off+entry <= len(data); off += entry {
		crc := binary.LittleEndian.Uint64(data[off:])
		name := string(bytes.TrimRight(data[off+8:off+entry], "\x00"))
		out[name] = uint32(crc)
	}
	return out, nil
}

// ReadSymvers parses a Module.symvers: "0xCRC\tsymbol\tmodule\texport...".
func ReadSymvers(path string) (map[string]uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kmod: %w", err)
	}
	defer f.Close()
	out := map[string]uint32{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) < 2 {
			continue
		}
		crc, err := strconv.ParseUint(strings.TrimPrefix(fields[0], "0x"), 16, 32)
		if err != nil {
			continue
		}
		out[fields[1]] = uint32(crc)
	}
	return out, sc.Err()
}

// CheckModule verifies that the module at ko was built for release: its
// vermagic starts with the release, and each symbol CRC it records agrees
// with symvers (when the kernel uses modversions).
func CheckModule(ko, release, symvers string) (vermagic string, err error) {
	info, err := ModInfo(ko)
	if err != nil {
		return "", err
	}
	vermagic = info["vermagic"]
	if f := strings.Fields(vermagic); len(f) == 0 || f[0] != release {
		return vermagic, fmt.Errorf("kmod: %s has vermagic %q, want %q first; it would not load into %s (was KERNELRELEASE set?)",
			filepath.Base(ko), vermagic, release, release)
	}
	mv, err := ModVersions(ko)
	if err != nil || mv == nil || symvers == "" {
		return vermagic, err
	}
	want, err := ReadSymvers(symvers)
	if err != nil {
		return vermagic, err
	}
	var bad []string
	for sym, crc := range mv {
		if w, ok := want[sym]; ok && w != crc {
			bad = append(bad, fmt.Sprintf("%s (module %#08x, kernel %#08x)", sym, crc, w))
		}
	}
	if len(bad) > 0 {
		return vermagic, fmt.Errorf("kmod: %s disagrees with %s on %d symbol CRCs: %s; the source does not match the kernel",
			filepath.Base(ko), symvers, len(bad), strings.Join(bad, ", "))
	}
	return vermagic, nil
}

// signingReady refuses, before anything is fetched, to build for a kernel
// that enforces module signatures when no key to sign with was given.
func signingReady(t *Target, o Options) error {
	if t.Config["CONFIG_MODULE_SIG_FORCE"] != "y" || (o.SignKey != "" && o.SignCert != "") {
		return nil
	}
	return fmt.Errorf("kmod: kernel %s only loads signed modules (CONFIG_MODULE_SIG_FORCE=y): give --sign-key KEY --sign-cert CERT "+
		"(a key the kernel trusts, e.g. enrolled with mokutil --import CERT), or boot with module.sig_enforce=0 where allowed", t.Release)
}

func (b *builder) verify(ctx context.Context, t *Target, src *Source, ko string) error {
	vm, err := CheckModule(ko, t.Release, src.Symvers)
	if err != nil {
		return err
	}
	b.res.Vermagic = vm
	if t.Config["CONFIG_MODVERSIONS"] == "y" {
		b.steps.Printf("vermagic %q; symbol CRCs agree with %s", vm, src.Symvers)
	} else {
		b.steps.Printf("vermagic %q; CONFIG_MODVERSIONS is off in %s, so there are no symbol CRCs to check", vm, t.Release)
	}
	if t.DistroNBD != "" {
		msg, err := CheckShape(ko, t.DistroNBD, src.Symvers)
		if err != nil {
			return err
		}
		b.steps.Printf("%s", msg)
	}
	if t.Config["CONFIG_MODULE_SIG_FORCE"] != "y" {
		return nil
	}
	build := filepath.Dir(filepath.Dir(ko))
	hash := strings.Trim(t.Config["CONFIG_MODULE_SIG_HASH"], `"`)
	if hash == "" {
		hash = "sha256"
	}
	if err := b.runLogged(ctx, "", filepath.Join(build, "scripts/sign-file"), hash, b.o.SignKey, b.o.SignCert, ko); err != nil {
		return fmt.Errorf("kmod: sign nbd.ko: %w", err)
	}
	b.steps.Printf("signed with %s", b.o.SignCert)
	return nil
}
