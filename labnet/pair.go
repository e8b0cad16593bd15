package labnet

import (
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Pair is a network namespace for a server, linked to the client's (the
// root) namespace by a veth pair: the client side has .1 of a test
// network, the server side .2.
type Pair struct {
	Name       string // namespace name, as ip netns knows it
	ClientIP   net.IP
	ServerIP   net.IP
	ClientLink string // the veth end in the root namespace
	ServerLink string // the veth end in the namespace
	ns         netns.NsHandle
}

// Networks are the documentation networks tests may use, as /24 prefixes.
var Networks = []string{"192.0.2", "198.51.100"}

// NewPair creates namespace name with a veth pair on network n (an index
// into Networks). A namespace or link of the same name left by a run that
// died is removed first.
func NewPair(name string, n int) (*Pair, error) {
	if n < 0 || n >= len(Networks) {
		return nil, fmt.Errorf("labnet: network %d: there are %d test networks", n, len(Networks))
	}
	prefix := Networks[n]
	t := &Pair{Name: name, ClientIP: net.ParseIP(prefix + ".1"), ServerIP: net.ParseIP(prefix + ".2"),
		ClientLink: fmt.Sprintf("nbdlab%dc", n), ServerLink: fmt.Sprintf("nbdlab%ds", n)}
	netns.DeleteNamed(name)
	if l, err := netlink.LinkByName(t.ClientLink); err == nil {
		netlink.LinkDel(l)
	}
	// NewNamed moves the calling thread into the new namespace; it goes
	// back before the thread is released.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("labnet: current network namespace: %w", err)
	}
	t.ns, err = netns.NewNamed(name)
	serr := netns.Set(orig)
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("labnet: create network namespace %s: %w", name, err)
	}
	if serr != nil {
		panic(fmt.Sprintf("labnet: cannot return to the original network namespace: %v", serr))
	}
	if err := t.link(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

func (t *Pair) link() error {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: t.ClientLink}, PeerName: t.ServerLink}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("labnet: veth %s-%s: %w", t.ClientLink, t.ServerLink, err)
	}
	peer, err := netlink.LinkByName(t.ServerLink)
	if err != nil {
		return fmt.Errorf("labnet: %w", err)
	}
	if err := netlink.LinkSetNsFd(peer, int(t.ns)); err != nil {
		return fmt.Errorf("labnet: move %s into %s: %w", t.ServerLink, t.Name, err)
	}
	if err := Configure(nil, t.ClientLink, t.ClientIP); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(t.ns)
	if err != nil {
		return fmt.Errorf("labnet: netlink in %s: %w", t.Name, err)
	}
	defer h.Close()
	if lo, err := h.LinkByName("lo"); err == nil {
		h.LinkSetUp(lo)
	}
	return Configure(h, t.ServerLink, t.ServerIP)
}

// Configure gives link its /24 address and brings it up, through h (nil:
// the current namespace).
func Configure(h *netlink.Handle, name string, ip net.IP) error {
	if h == nil {
		h = &netlink.Handle{}
	}
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("labnet: %s: %w", name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(24, 32)}}
	if err := h.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("labnet: address %s on %s: %w", ip, name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("labnet: %s up: %w", name, err)
	}
	return nil
}

// SetLink brings the client side of the pair up or down.
func (t *Pair) SetLink(up bool) error {
	l, err := netlink.LinkByName(t.ClientLink)
	if err != nil {
		return fmt.Errorf("labnet: %w", err)
	}
	if up {
		return netlink.LinkSetUp(l)
	}
	return netlink.LinkSetDown(l)
}

// Handle is netlink in the pair's namespace; the caller closes it.
func (t *Pair) Handle() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(t.ns)
	if err != nil {
		return nil, fmt.Errorf("labnet: netlink in %s: %w", t.Name, err)
	}
	return h, nil
}

// Close removes the pair and the namespace.
func (t *Pair) Close() error {
	if l, err := netlink.LinkByName(t.ClientLink); err == nil {
		netlink.LinkDel(l)
	}
	t.ns.Close()
	return netns.DeleteNamed(t.Name)
}
