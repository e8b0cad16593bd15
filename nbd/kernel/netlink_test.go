//go:build linux

package kernel

import (
	"os"
	"testing"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/genetlink/genltest"
	"github.com/mdlayher/netlink"
)

// fakeKernel answers nbd family requests the way drivers/block/nbd.c does,
// recording what it was sent.
func fakeKernel(t *testing.T, got map[uint16][]byte, fds *[]uint32) *Netlink {
	family := genetlink.Family{ID: 42, Name: FamilyName, Version: familyVersion}
	c := genltest.Dial(genltest.ServeFamily(family, func(greq genetlink.Message, _ netlink.Message) ([]genetlink.Message, error) {
		ad, err := netlink.NewAttributeDecoder(greq.Data)
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			got[ad.Type()] = ad.Bytes()
			if ad.Type() == attrSockets {
				ad.Nested(func(list *netlink.AttributeDecoder) error {
					for list.Next() {
						list.Nested(func(item *netlink.AttributeDecoder) error {
							for item.Next() {
								*fds = append(*fds, item.Uint32())
							}
							return nil
						})
					}
					return nil
				})
			}
		}
		ae := netlink.NewAttributeEncoder()
		switch greq.Header.Command {
		case cmdConnect:
			ae.Uint32(attrIndex, 7)
		case cmdStatus:
			ae.Nested(attrDeviceList, func(l *netlink.AttributeEncoder) error {
				for i, conn := range []uint8{1, 0} {
					l.Nested(deviceItem, func(d *netlink.AttributeEncoder) error {
						d.Uint32(deviceIndex, uint32(i))
						d.Uint8(deviceConnected, conn)
						return nil
					})
				}
				return nil
			})
		}
		data, _ := ae.Encode()
		return []genetlink.Message{{Header: greq.Header, Data: data}}, nil
	}))
	t.Cleanup(func() { c.Close() })
	return &Netlink{c: c, family: family}
}

func TestConnectEncodesTheDevice(t *testing.T) {
	got := map[uint16][]byte{}
	var fds []uint32
	k := fakeKernel(t, got, &fds)
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	idx, err := k.Connect(Config{Index: -1, Size: 1 << 30, BlockSize: 512, ServerFlags: 0x10d,
		Timeout: 30 * time.Second, DeadTimeout: 5 * time.Second, Backend: "nbd://h/e", Sockets: []*os.File{r, w}})
	if err != nil || idx != 7 {
		t.Fatalf("Connect = %d, %v; want the kernel's index 7", idx, err)
	}
	if _, ok := got[attrIndex]; ok {
		t.Error("sent NBD_ATTR_INDEX for any device; the kernel would not pick one")
	}
	u64 := func(a uint16) uint64 { return nlenc(got[a]) }
	for _, c := range []struct {
		attr uint16
		want uint64
	}{{attrSizeBytes, 1 << 30}, {attrBlockSizeBytes, 512}, {attrServerFlags, 0x10d}, {attrTimeout, 30}, {attrDeadConnTimeout, 5}} {
		if g := u64(c.attr); g != c.want {
			t.Errorf("attribute %d = %d, want %d", c.attr, g, c.want)
		}
	}
	if string(got[attrBackendIdentifier]) != "nbd://h/e\x00" {
		t.Errorf("backend %q", got[attrBackendIdentifier])
	}
	if len(fds) != 2 || fds[0] != uint32(r.Fd()) || fds[1] != uint32(w.Fd()) {
		t.Errorf("sockets %v, want [%d %d]", fds, r.Fd(), w.Fd())
	}
}

func nlenc(b []byte) uint64 {
	var v uint64
	for i := len(b) - 1; i >= 0; i-- { // native (little) endian
		v = v<<8 | uint64(b[i])
	}
	return v
}

func TestStatusDecodesDevices(t *testing.T) {
	var fds []uint32
	k := fakeKernel(t, map[uint16][]byte{}, &fds)
	devs, err := k.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 2 || devs[0] != (DeviceStatus{0, true}) || devs[1] != (DeviceStatus{1, false}) {
		t.Fatalf("status %+v", devs)
	}
}

func TestConnectNeedsASocket(t *testing.T) {
	k := fakeKernel(t, map[uint16][]byte{}, new([]uint32))
	if _, err := k.Connect(Config{Index: -1, Size: 1}); err == nil {
		t.Fatal("connect without sockets accepted")
	}
}

func TestParseDevice(t *testing.T) {
	for in, want := range map[string]int{"/dev/nbd3": 3, "nbd12": 12, "0": 0} {
		if n, ok := ParseDevice(in); !ok || n != want {
			t.Errorf("ParseDevice(%q) = %d, %v", in, n, ok)
		}
	}
	for _, bad := range []string{"/dev/sda", "nbd", "nbd-1", "any", "/dev/nbd0p1"} {
		if _, ok := ParseDevice(bad); ok {
			t.Errorf("ParseDevice(%q) accepted", bad)
		}
	}
	for in, want := range map[string]int{"/dev/nbd0p1": 0, "nbd12p15": 12, "/dev/nbd3": 3} {
		if n, ok := ParseDeviceOrPartition(in); !ok || n != want {
			t.Errorf("ParseDeviceOrPartition(%q) = %d, %v", in, n, ok)
		}
	}
	for _, bad := range []string{"/dev/nbd0p", "/dev/nbd0p0", "nbdp1", "/dev/sda1", "/dev/nbd0px"} {
		if _, ok := ParseDeviceOrPartition(bad); ok {
			t.Errorf("ParseDeviceOrPartition(%q) accepted", bad)
		}
	}
}
