package labnet

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// Profile is a link's shape: a rate limit and a round-trip delay. Shape
// puts half the delay and the rate on the egress of each end, so a pair
// shaped at both ends has RTT Delay and Rate each way.
type Profile struct {
	Name  string
	Rate  uint64        // bits per second; 0: unlimited
	Delay time.Duration // round trip
}

// String describes p as a person reads it: "wan (100 Mbit/s, 10 ms RTT)".
func (p Profile) String() string {
	if p.Rate == 0 && p.Delay == 0 {
		return p.Name + " (unshaped)"
	}
	rate := "unlimited"
	switch {
	case p.Rate >= 1e9:
		rate = fmt.Sprintf("%g Gbit/s", float64(p.Rate)/1e9)
	case p.Rate > 0:
		rate = fmt.Sprintf("%g Mbit/s", float64(p.Rate)/1e6)
	}
	return fmt.Sprintf("%s (%s, %g ms RTT)", p.Name, rate, float64(p.Delay)/float64(time.Millisecond))
}

// Profiles are the link profiles benchmarks know by name.
func Profiles() []Profile {
	return []Profile{
		{Name: "none"},
		{Name: "lan", Rate: 1e9, Delay: 100 * time.Microsecond},
		{Name: "wan", Rate: 100e6, Delay: 10 * time.Millisecond},
	}
}

// FindProfile returns the profile called name.
func FindProfile(name string) (Profile, error) {
	var names []string
	for _, p := range Profiles() {
		if p.Name == name {
			return p, nil
		}
		names = append(names, p.Name)
	}
	return Profile{}, fmt.Errorf("labnet: unknown link profile %q; known: %s", name, strings.Join(names, ", "))
}

// Shape replaces the root qdisc of link (through h; nil: the current
// namespace) with netem giving p's rate and half its delay; profile none
// restores the default qdisc. netem is a module in distribution kernels:
// Shape loads it.
func Shape(ctx context.Context, h *netlink.Handle, link string, p Profile) error {
	if h == nil {
		h = &netlink.Handle{}
	}
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("labnet: shape %s: %w", link, err)
	}
	attrs := netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT}
	old := netlink.NewNetem(attrs, netlink.NetemQdiscAttrs{})
	h.QdiscDel(old) // none there is fine
	if p.Rate == 0 && p.Delay == 0 {
		return nil
	}
	exec.CommandContext(ctx, "modprobe", "sch_netem").Run()
	q := netlink.NewNetem(attrs, netlink.NetemQdiscAttrs{
		Latency: uint32(p.Delay / 2 / time.Microsecond),
		Rate64:  p.Rate / 8, // netem takes bytes per second
		// Room for a window's worth of packets in flight at the delay.
		Limit: 10000,
	})
	if err := h.QdiscAdd(q); err != nil {
		return fmt.Errorf("labnet: netem on %s for %s (is sch_netem available in this kernel?): %w", link, p, err)
	}
	return nil
}
