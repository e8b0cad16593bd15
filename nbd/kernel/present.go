//go:build linux

package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ErrNoNBD is wrapped by Present's error: this kernel has no nbd driver
// loaded.
var ErrNoNBD = errors.New("no nbd driver")

// Present returns nil when the kernel has its nbd driver (built in or
// loaded), or else an error wrapping ErrNoNBD that says what is missing
// and what to do: load the module, build it, or, on a kernel that
// cannot load modules at all, boot another one.
func Present() error {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		return nil
	}
	if devs, _ := filepath.Glob("/sys/block/nbd*"); len(devs) > 0 {
		return nil
	}
	release := "this kernel"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		release = "kernel " + strings.TrimSpace(string(b))
	}
	return missing(release, fileExists("/proc/modules"), moduleListed(release))
}

// noNBD is Present's error; it is ErrNoNBD.
type noNBD string

func (e noNBD) Error() string        { return string(e) }
func (e noNBD) Is(target error) bool { return target == ErrNoNBD }

// missing words Present's error from what was found.
func missing(release string, modules, listed bool) error {
	switch {
	case !modules:
		return noNBD(release + " has no nbd driver and cannot load modules (built without CONFIG_MODULES): boot a kernel with nbd, or run in a lab VM (nbdlab vm run)")
	case listed:
		return noNBD("the nbd module is not loaded: modprobe nbd max_part=8")
	}
	return noNBD(release + " has no nbd module: build and install it with nbdlab kmod build (go run mage.go buildNbd), then modprobe nbd max_part=8")
}

// moduleListed reports whether modules.dep of the release lists nbd.ko.
func moduleListed(release string) bool {
	f, err := os.Open(filepath.Join("/lib/modules", strings.TrimPrefix(release, "kernel "), "modules.dep"))
	if err != nil {
		return false
	}
	defer f.Close()
	return listsNBD(f)
}

func listsNBD(r io.Reader) bool {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, _, _ := strings.Cut(sc.Text(), ":")
		base := filepath.Base(name)
		if base == "nbd.ko" || strings.HasPrefix(base, "nbd.ko.") {
			return true
		}
	}
	return false
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// MountedParts returns where device n and its partitions are mounted,
// from /proc/self/mounts: "/dev/nbd0p1 on /mnt/x".
func MountedParts(n int) ([]string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return mountedParts(f, n), nil
}

func mountedParts(r io.Reader, n int) []string {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		if m, ok := ParseDeviceOrPartition(fields[0]); ok && m == n && strings.HasPrefix(fields[0], "/dev/nbd") {
			out = append(out, fields[0]+" on "+unescapeMount(fields[1]))
		}
	}
	return out
}

// unescapeMount undoes the octal escapes of /proc/mounts (\040 for space).
func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// Holder is a block device stacked on an nbd device or its partition (md,
// device-mapper: LVM, dm-crypt, multipath), as /sys/block/*/holders tells.
type Holder struct {
	Of   string // the nbd device or partition held: /dev/nbd0p1
	Name string // the holder's kernel name: md0, dm-3
	DM   string // a device-mapper holder's name (dm/name): vg-lv
}

func (h Holder) String() string {
	switch {
	case strings.HasPrefix(h.Name, "md"):
		return fmt.Sprintf("%s holds %s (take it out: mdadm /dev/%s --fail %s --remove %s, or stop the array: mdadm --stop /dev/%s)",
			h.Name, h.Of, h.Name, h.Of, h.Of, h.Name)
	case h.DM != "":
		return fmt.Sprintf("%s (/dev/mapper/%s) holds %s (remove it: umount, then vgchange -an for LVM, cryptsetup close for dm-crypt, or dmsetup remove %s)",
			h.Name, h.DM, h.Of, h.DM)
	}
	return fmt.Sprintf("%s holds %s", h.Name, h.Of)
}

// Holders returns what holds device n or one of its partitions.
func Holders(n int) []Holder { return holders("/sys", n) }

func holders(sys string, n int) []Holder {
	dev := fmt.Sprintf("nbd%d", n)
	dirs := []string{filepath.Join(sys, "block", dev)}
	parts, _ := filepath.Glob(filepath.Join(sys, "block", dev, dev+"p*"))
	dirs = append(dirs, parts...)
	var out []Holder
	for _, d := range dirs {
		ents, _ := os.ReadDir(filepath.Join(d, "holders"))
		for _, e := range ents {
			h := Holder{Of: "/dev/" + filepath.Base(d), Name: e.Name()}
			if b, err := os.ReadFile(filepath.Join(sys, "block", e.Name(), "dm", "name")); err == nil {
				h.DM = strings.TrimSpace(string(b))
			}
			out = append(out, h)
		}
	}
	return out
}
