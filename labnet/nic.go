package labnet

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"time"

	"github.com/vishvananda/netlink"
)

// VMAddr is the address of lab VM i (0 or 1) on a link between two VMs:
// 192.0.2.1 and 192.0.2.2.
func VMAddr(i int) net.IP { return net.ParseIP(fmt.Sprintf("%s.%d", Networks[0], i+1)) }

// UpNIC loads the virtio-net driver in a lab VM, waits for its one
// Ethernet interface and gives it ip. It returns the interface's name.
func UpNIC(ctx context.Context, ip net.IP) (string, error) {
	exec.CommandContext(ctx, "modprobe", "virtio_net").Run()
	// Where udevd runs, let it finish with the new interface before it
	// is named and set up here (it keeps eth0: the guest boots with
	// net.ifnames=0); without udevd this returns at once.
	exec.CommandContext(ctx, "udevadm", "settle", "--timeout=10").Run()
	deadline := time.Now().Add(10 * time.Second)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return "", fmt.Errorf("labnet: list links: %w", err)
		}
		for _, l := range links {
			if l.Type() == "device" && l.Attrs().EncapType == "ether" {
				return l.Attrs().Name, Configure(nil, l.Attrs().Name, ip)
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("labnet: no Ethernet interface appeared in 10s (does this VM have a NIC, and the kernel virtio_net?)")
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
