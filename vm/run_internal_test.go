package vm

import (
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
