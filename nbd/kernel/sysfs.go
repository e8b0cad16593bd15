//go:build linux

package kernel

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Device is what sysfs says about /dev/nbdN.
type Device struct {
	Index     int
	Path      string // /dev/nbdN
	Connected bool   // has a pid file: a client is attached
	Size      int64  // bytes
	Backend   string // the backend identifier given at connect
	PID       int    // the connecting task's pid
}

// Devices lists the nbd devices in sysfs, in index order.
func Devices() ([]Device, error) {
	dirs, err := filepath.Glob("/sys/block/nbd*")
	if err != nil {
		return nil, err
	}
	var out []Device
	for _, d := range dirs {
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "nbd"))
		if err != nil {
			continue
		}
		out = append(out, DeviceInfo(n))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out, nil
}

// DeviceInfo reads sysfs for /dev/nbdN.
func DeviceInfo(n int) Device {
	dir := "/sys/block/nbd" + strconv.Itoa(n)
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return strings.TrimSpace(string(b))
	}
	d := Device{Index: n, Path: "/dev/nbd" + strconv.Itoa(n), Backend: read("backend")}
	if sectors, err := strconv.ParseInt(read("size"), 10, 64); err == nil {
		d.Size = sectors * 512
	}
	if pid, err := strconv.Atoi(read("pid")); err == nil {
		d.PID, d.Connected = pid, true
	}
	return d
}

// ParseDevice accepts /dev/nbdN, nbdN or N and returns N.
func ParseDevice(s string) (int, bool) {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "/dev/"), "nbd")
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= 0
}

// ParseDeviceOrPartition is ParseDevice that also accepts a partition of
// the device, /dev/nbdNpM or nbdNpM, and returns N: the classic recipe
// detaches by the partition it mounted.
func ParseDeviceOrPartition(s string) (int, bool) {
	if dev, part, ok := strings.Cut(strings.TrimPrefix(s, "/dev/"), "p"); ok && strings.HasPrefix(dev, "nbd") {
		if m, err := strconv.Atoi(part); err != nil || m < 1 {
			return 0, false
		}
		return ParseDevice(dev)
	}
	return ParseDevice(s)
}
