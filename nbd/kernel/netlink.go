//go:build linux

package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Generic netlink names and numbers of include/uapi/linux/nbd-netlink.h.
const (
	FamilyName     = "nbd"
	familyVersion  = 1
	multicastGroup = "nbd_mc_group"

	cmdConnect     = 1
	cmdDisconnect  = 2
	cmdReconfigure = 3
	cmdLinkDead    = 4
	cmdStatus      = 5

	attrIndex             = 1
	attrSizeBytes         = 2
	attrBlockSizeBytes    = 3
	attrTimeout           = 4
	attrServerFlags       = 5
	attrClientFlags       = 6
	attrSockets           = 7
	attrDeadConnTimeout   = 8
	attrDeviceList        = 9
	attrBackendIdentifier = 10

	sockItem = 1
	sockFD   = 1

	deviceItem      = 1
	deviceIndex     = 1
	deviceConnected = 2

	// ClientFlagDestroyOnDisconnect deletes the device on disconnect.
	ClientFlagDestroyOnDisconnect = 1 << 0
	// ClientFlagDisconnectOnClose disconnects when the last opener closes.
	ClientFlagDisconnectOnClose = 1 << 1
)

// ErrNoFamily is returned by OpenNetlink when the kernel has no nbd netlink
// family: the module is not loaded, or too old (use the ioctls).
var ErrNoFamily = errors.New("kernel: no \"nbd\" generic netlink family (is the nbd module loaded? modprobe nbd)")

// Config describes a device to connect.
type Config struct {
	Index       int    // device number, or -1 for any free one
	Size        uint64 // bytes
	BlockSize   uint64 // logical block size; 0 for the kernel's default
	ServerFlags uint16 // transmission flags from the handshake
	ClientFlags uint64
	Timeout     time.Duration // per request; 0 for the kernel's default
	DeadTimeout time.Duration // wait for a reconnect before failing I/O
	Backend     string        // identifies the backend in sysfs
	Sockets     []*os.File    // connected sockets, past the handshake
}

// Netlink is a generic netlink connection to the kernel's nbd family.
type Netlink struct {
	c      *genetlink.Conn
	family genetlink.Family
}

// OpenNetlink connects to the nbd family, in the initial network namespace.
func OpenNetlink() (*Netlink, error) {
	cfg := &netlink.Config{}
	if ns, err := initNetNS(); err == nil && ns >= 0 {
		defer unix.Close(ns)
		cfg.NetNS = ns
	}
	c, err := genetlink.Dial(cfg)
	if err != nil {
		return nil, fmt.Errorf("kernel: generic netlink: %w", err)
	}
	f, err := c.GetFamily(FamilyName)
	if err != nil {
		c.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoFamily
		}
		return nil, fmt.Errorf("kernel: look up the nbd family: %w", err)
	}
	return &Netlink{c: c, family: f}, nil
}

// initNetNS returns a descriptor of the initial network namespace if this
// process lives in another one, or -1 if it is already there.
func initNetNS() (int, error) {
	self, err := netns.Get()
	if err != nil {
		return -1, err
	}
	defer self.Close()
	init, err := netns.GetFromPid(1)
	if err != nil {
		return -1, err
	}
	if self.Equal(init) {
		init.Close()
		return -1, nil
	}
	return int(init), nil
}

// Close closes the netlink socket.
func (c *Netlink) Close() error { return c.c.Close() }

func (c *Netlink) execute(cmd uint8, ae *netlink.AttributeEncoder) ([]genetlink.Message, error) {
	data, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	msg := genetlink.Message{Header: genetlink.Header{Command: cmd, Version: familyVersion}, Data: data}
	return c.c.Execute(msg, c.family.ID, netlink.Request|netlink.Acknowledge)
}

// Connect configures and starts a device with the given sockets and
// returns its index.
func (c *Netlink) Connect(cfg Config) (int, error) {
	if len(cfg.Sockets) == 0 {
		return -1, errors.New("kernel: connect needs at least one socket")
	}
	ae := netlink.NewAttributeEncoder()
	if cfg.Index >= 0 {
		ae.Uint32(attrIndex, uint32(cfg.Index))
	}
	ae.Uint64(attrSizeBytes, cfg.Size)
	if cfg.BlockSize != 0 {
		ae.Uint64(attrBlockSizeBytes, cfg.BlockSize)
	}
	if cfg.Timeout > 0 {
		ae.Uint64(attrTimeout, uint64(max(1, cfg.Timeout/time.Second)))
	}
	if cfg.DeadTimeout > 0 {
		ae.Uint64(attrDeadConnTimeout, uint64(max(1, cfg.DeadTimeout/time.Second)))
	}
	ae.Uint64(attrServerFlags, uint64(cfg.ServerFlags))
	if cfg.ClientFlags != 0 {
		ae.Uint64(attrClientFlags, cfg.ClientFlags)
	}
	if cfg.Backend != "" {
		ae.String(attrBackendIdentifier, cfg.Backend)
	}
	encodeSockets(ae, cfg.Sockets)
	msgs, err := c.execute(cmdConnect, ae)
	if err != nil {
		return -1, fmt.Errorf("kernel: NBD_CMD_CONNECT: %w", err)
	}
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			continue
		}
		for ad.Next() {
			if ad.Type() == attrIndex {
				return int(ad.Uint32()), nil
			}
		}
	}
	return -1, errors.New("kernel: NBD_CMD_CONNECT reply carries no device index")
}

func encodeSockets(ae *netlink.AttributeEncoder, socks []*os.File) {
	ae.Nested(attrSockets, func(nae *netlink.AttributeEncoder) error {
		for _, s := range socks {
			nae.Nested(sockItem, func(sae *netlink.AttributeEncoder) error {
				sae.Uint32(sockFD, uint32(s.Fd()))
				return nil
			})
		}
		return nil
	})
}

// Reconfigure replaces dead connections of device index with sockets.
// backend must repeat the identifier given at connect, if there was one:
// the kernel refuses to reconfigure a device for another backend.
func (c *Netlink) Reconfigure(index int, backend string, socks []*os.File) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(index))
	if backend != "" {
		ae.String(attrBackendIdentifier, backend)
	}
	encodeSockets(ae, socks)
	if _, err := c.execute(cmdReconfigure, ae); err != nil {
		return fmt.Errorf("kernel: NBD_CMD_RECONFIGURE of nbd%d: %w", index, err)
	}
	return nil
}

// Disconnect disconnects device index.
func (c *Netlink) Disconnect(index int) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(index))
	if _, err := c.execute(cmdDisconnect, ae); err != nil {
		return fmt.Errorf("kernel: NBD_CMD_DISCONNECT of nbd%d: %w", index, err)
	}
	return nil
}

// DeviceStatus is one device of NBD_CMD_STATUS.
type DeviceStatus struct {
	Index     int
	Connected bool
}

// Status lists every nbd device the kernel has.
func (c *Netlink) Status() ([]DeviceStatus, error) {
	msgs, err := c.execute(cmdStatus, netlink.NewAttributeEncoder())
	if err != nil {
		return nil, fmt.Errorf("kernel: NBD_CMD_STATUS: %w", err)
	}
	var out []DeviceStatus
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			if ad.Type() != attrDeviceList {
				continue
			}
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					var d DeviceStatus
					list.Nested(func(item *netlink.AttributeDecoder) error {
						for item.Next() {
							switch item.Type() {
							case deviceIndex:
								d.Index = int(item.Uint32())
							case deviceConnected:
								d.Connected = item.Uint8() != 0
							}
						}
						return nil
					})
					out = append(out, d)
				}
				return nil
			})
		}
	}
	return out, nil
}

// WatchLinkDead subscribes to the kernel's NBD_CMD_LINK_DEAD notices and
// sends each dead device's index on the returned channel until ctx ends.
// It uses its own socket, so notices do not mix with command replies.
func WatchLinkDead(ctx context.Context) (<-chan int, error) {
	c, err := OpenNetlink()
	if err != nil {
		return nil, err
	}
	var group uint32
	for _, g := range c.family.Groups {
		if g.Name == multicastGroup {
			group = g.ID
		}
	}
	if group == 0 {
		c.Close()
		return nil, fmt.Errorf("kernel: the nbd family has no %q multicast group", multicastGroup)
	}
	if err := c.c.JoinGroup(group); err != nil {
		c.Close()
		return nil, fmt.Errorf("kernel: join %s: %w", multicastGroup, err)
	}
	ch := make(chan int, 16)
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	go func() {
		defer close(ch)
		for {
			msgs, _, err := c.c.Receive()
			if err != nil {
				return
			}
			for _, m := range msgs {
				if m.Header.Command != cmdLinkDead {
					continue
				}
				ad, err := netlink.NewAttributeDecoder(m.Data)
				if err != nil {
					continue
				}
				for ad.Next() {
					if ad.Type() == attrIndex {
						select {
						case ch <- int(ad.Uint32()):
						case <-ctx.Done():
							return
						}
					}
				}
			}
		}
	}()
	return ch, nil
}
