package conform

import (
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testNet is a network namespace for a server, linked to the client's
// (the root) namespace by a veth pair: the client side has .1 of a test
// network, the server side .2.
type testNet struct {
	Name       string // namespace name, as ip netns knows it
	ClientIP   net.IP
	ServerIP   net.IP
	clientLink string
	ns         netns.NsHandle
}

// testNetworks are the documentation networks tests may use.
var testNetworks = []string{"192.0.2", "198.51.100"}

// newTestNet creates namespace name with a veth pair on network n (an
// index into testNetworks).
func newTestNet(name string, n int) (*testNet, error) {
	prefix := testNetworks[n]
	t := &testNet{Name: name, ClientIP: net.ParseIP(prefix + ".1"), ServerIP: net.ParseIP(prefix + ".2"),
		clientLink: fmt.Sprintf("nbdlab%dc", n)}
	netns.DeleteNamed(name) // left by a run that died
	if l, err := netlink.LinkByName(t.clientLink); err == nil {
		netlink.LinkDel(l)
	}
	// NewNamed moves the calling thread into the new namespace; it goes
	// back before the thread is released.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("conform: current network namespace: %w", err)
	}
	t.ns, err = netns.NewNamed(name)
	serr := netns.Set(orig)
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("conform: create network namespace %s: %w", name, err)
	}
	if serr != nil {
		panic(fmt.Sprintf("conform: cannot return to the original network namespace: %v", serr))
	}
	if err := t.link(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

func (t *testNet) link() error {
	serverLink := t.clientLink[:len(t.clientLink)-1] + "s"
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: t.clientLink}, PeerName: serverLink}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("conform: veth %s-%s: %w", t.clientLink, serverLink, err)
	}
	peer, err := netlink.LinkByName(serverLink)
	if err != nil {
		return fmt.Errorf("conform: %w", err)
	}
	if err := netlink.LinkSetNsFd(peer, int(t.ns)); err != nil {
		return fmt.Errorf("conform: move %s into %s: %w", serverLink, t.Name, err)
	}
	if err := configure(nil, t.clientLink, t.ClientIP); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(t.ns)
	if err != nil {
		return fmt.Errorf("conform: netlink in %s: %w", t.Name, err)
	}
	defer h.Close()
	if lo, err := h.LinkByName("lo"); err == nil {
		h.LinkSetUp(lo)
	}
	return configure(h, serverLink, t.ServerIP)
}

// configure gives link its /24 address and brings it up, through h (nil:
// the current namespace).
func configure(h *netlink.Handle, name string, ip net.IP) error {
	if h == nil {
		h = &netlink.Handle{}
	}
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("conform: %s: %w", name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(24, 32)}}
	if err := h.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("conform: address %s on %s: %w", ip, name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("conform: %s up: %w", name, err)
	}
	return nil
}

// SetLink brings the client side of the pair up or down.
func (t *testNet) SetLink(up bool) error {
	l, err := netlink.LinkByName(t.clientLink)
	if err != nil {
		return fmt.Errorf("conform: %w", err)
	}
	if up {
		return netlink.LinkSetUp(l)
	}
	return netlink.LinkSetDown(l)
}

// Close removes the pair and the namespace.
func (t *testNet) Close() error {
	if l, err := netlink.LinkByName(t.clientLink); err == nil {
		netlink.LinkDel(l)
	}
	t.ns.Close()
	return netns.DeleteNamed(t.Name)
}
