package vm

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/kernels"
)

// A VM with a NIC gets one socket netdev and one virtio-net device on it;
// one without gets none.
func TestQemuArgsNIC(t *testing.T) {
	a, b, err := LinkedNICs()
	if err != nil {
		t.Fatal(err)
	}
	if a.Local != b.Remote || b.Local != a.Remote || a.Local == b.Local || a.MAC == b.MAC {
		t.Fatalf("NICs not wired to each other: %+v %+v", a, b)
	}
	count := func(cfg Config) (netdevs, devices int) {
		args := qemuArgs(cfg, kernels.Kernel{Image: "bzImage"}, "initrd", "tcg", "ctl.sock", "klog")
		for i, arg := range args {
			if arg == "-netdev" {
				netdevs++
				if want := "socket,id=net0,udp=" + a.Remote + ",localaddr=" + a.Local; args[i+1] != want {
					t.Errorf("-netdev %s, want %s", args[i+1], want)
				}
			}
			if arg == "-device" && strings.HasPrefix(args[i+1], "virtio-net-pci,") {
				devices++
			}
		}
		return netdevs, devices
	}
	if n, d := count(Config{CPUs: 1, Memory: "1G", NIC: &a}); n != 1 || d != 1 {
		t.Errorf("with a NIC: %d netdevs, %d NICs; want one of each", n, d)
	}
	if n, d := count(Config{CPUs: 1, Memory: "1G"}); n != 0 || d != 0 {
		t.Errorf("without a NIC: %d netdevs, %d NICs; want none", n, d)
	}
}

// The instruction clock is QEMU's -icount under TCG, and nothing under
// KVM, where QEMU refuses it.
func TestQemuArgsInstructionClock(t *testing.T) {
	for _, tc := range []struct {
		accel string
		clock bool
		want  string
	}{
		{"tcg", true, "shift=3"},
		{"tcg", false, ""},
		{"kvm", true, ""},
	} {
		args := qemuArgs(Config{CPUs: 2, Memory: "1G", InstructionClock: tc.clock}, kernels.Kernel{Image: "bzImage"}, "initrd", tc.accel, "ctl.sock", "klog")
		got := ""
		for i, a := range args {
			if a == "-icount" {
				got = args[i+1]
			}
		}
		if got != tc.want {
			t.Errorf("%s, instruction clock %v: -icount %q, want %q", tc.accel, tc.clock, got, tc.want)
		}
	}
}

func TestSameOutput(t *testing.T) {
	dir := t.TempDir()
	a, err := os.Create(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a2, err := os.OpenFile(a.Name(), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	b, err := os.Create(filepath.Join(dir, "b"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var buf1, buf2 bytes.Buffer
	for _, tc := range []struct {
		name           string
		stdout, stderr io.Writer
		want           bool
	}{
		{"one buffer", &buf1, &buf1, true},
		{"two buffers", &buf1, &buf2, false},
		{"one open file", a, a, true},
		{"the file opened twice", a, a2, true},
		{"two files", a, b, false},
		{"a file and a buffer", a, &buf1, false},
	} {
		if got := sameOutput(tc.stdout, tc.stderr); got != tc.want {
			t.Errorf("%s: sameOutput = %v, want %v", tc.name, got, tc.want)
		}
	}
}
