package vm

import (
	"fmt"
	"net"
)

// NIC is a guest's network interface: QEMU's socket netdev sends its
// Ethernet frames as UDP datagrams from Local to Remote on the host's
// loopback. Two VMs whose NICs name each other share a link; nothing else
// can reach it.
type NIC struct {
	Local  string // host:port this VM's frames come from
	Remote string // host:port of the other VM's NIC
	MAC    string
}

// LinkedNICs returns two NICs wired to each other through two free UDP
// ports on 127.0.0.1. Either VM may boot first: frames sent before the
// other is up are lost, as on a cable not yet plugged in.
func LinkedNICs() (a, b NIC, err error) {
	var ports [2]string
	for i := range ports {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			return a, b, fmt.Errorf("vm: find a free UDP port for a VM link: %w", err)
		}
		ports[i] = c.LocalAddr().String()
		defer c.Close()
	}
	a = NIC{Local: ports[0], Remote: ports[1], MAC: "52:54:00:00:00:01"}
	b = NIC{Local: ports[1], Remote: ports[0], MAC: "52:54:00:00:00:02"}
	return a, b, nil
}
