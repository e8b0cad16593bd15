//go:build linux

package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nbdlab/nbdlab/internal/unixpair"
	"github.com/nbdlab/nbdlab/nbd"
)

// Dialer opens a fresh transport connection to the server, not yet
// negotiated. Attach calls it once per connection and again to reconnect.
type Dialer func(ctx context.Context) (net.Conn, error)

// ServeDialer returns a Dialer whose connections are socket pairs with
// srv serving the other end in this process: how a process serves a
// backend to the kernel without a listening socket (nbdlab attach, like
// qemu-nbd -c). The device then works only while this process lives.
func ServeDialer(srv *nbd.Server) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		a, b, err := unixpair.Conns("nbd-serve")
		if err != nil {
			return nil, fmt.Errorf("kernel: %w", err)
		}
		go srv.ServeConn(context.Background(), a)
		return b, nil
	}
}

// Interface is the kernel interface a device is set up through.
type Interface string

// Interfaces.
const (
	InterfaceAuto    Interface = "auto" // netlink, or ioctl where the kernel has no nbd netlink family
	InterfaceNetlink Interface = "netlink"
	InterfaceIoctl   Interface = "ioctl"
)

func (i Interface) String() string { return string(i) }

// Set parses auto, netlink or ioctl; it makes *Interface a flag.Value.
func (i *Interface) Set(s string) error {
	switch v := Interface(s); v {
	case InterfaceAuto, InterfaceNetlink, InterfaceIoctl:
		*i = v
		return nil
	}
	return fmt.Errorf("interface %q: want auto, netlink or ioctl", s)
}

// AttachOptions configure Attach. Zero values mean: any free device, one
// connection, the kernel's timeouts, the export's preferred block size,
// netlink with a fallback to ioctls.
type AttachOptions struct {
	Device      string // /dev/nbdN, nbdN, N, or "any"
	Connections int
	Timeout     time.Duration // per request
	DeadTimeout time.Duration // how long I/O waits for a reconnect
	ReadOnly    bool
	BlockSize   uint64
	Interface   Interface // default InterfaceAuto
	Backend     string    // shown in /sys/block/nbdN/backend
	Client      nbd.ClientConfig
	Logf        func(format string, args ...any)
}

// Attachment is a device connected through the kernel.
type Attachment struct {
	Index       int
	Path        string
	Interface   Interface // InterfaceNetlink or InterfaceIoctl
	Info        nbd.ExportInfo
	Connections int
	// NeedsProcess is true when the device only works while this process
	// lives: the ioctl interface, or TLS proxied through socket pairs.
	NeedsProcess bool

	opts    AttachOptions
	dial    Dialer
	ioctlc  chan error
	proxies sync.WaitGroup
}

// kernelConn is a negotiated connection ready for the kernel: a socket
// file, and a proxy to stop when the connection is TLS.
type kernelConn struct {
	file    *os.File
	proxied bool
}

// negotiate dials and runs the handshake without structured replies,
// which the kernel's client does not speak.
func (a *Attachment) negotiate(ctx context.Context) (nbd.ExportInfo, kernelConn, error) {
	conn, err := a.dial(ctx)
	if err != nil {
		return nbd.ExportInfo{}, kernelConn{}, err
	}
	cfg := a.opts.Client
	cfg.NoStructuredReplies = true
	info, c, err := nbd.Negotiate(ctx, conn, &cfg)
	if err != nil {
		conn.Close()
		return info, kernelConn{}, err
	}
	kc, err := a.socketFor(c)
	return info, kc, err
}

// socketFor returns a socket the kernel can use for c: c's own descriptor,
// or for a TLS session one end of a socket pair whose other end this
// process relays through TLS.
func (a *Attachment) socketFor(c net.Conn) (kernelConn, error) {
	if fc, ok := c.(interface{ File() (*os.File, error) }); ok {
		f, err := fc.File()
		c.Close() // the duplicate (and then the kernel) keeps the socket open
		if err != nil {
			return kernelConn{}, fmt.Errorf("kernel: socket descriptor: %w", err)
		}
		return kernelConn{file: f}, nil
	}
	kf, local, err := unixpair.New("nbd-tls-relay")
	if err != nil {
		c.Close()
		return kernelConn{}, fmt.Errorf("kernel: %w", err)
	}
	a.proxies.Add(1)
	go func() {
		defer a.proxies.Done()
		relay(local, c)
	}()
	return kernelConn{file: kf, proxied: true}, nil
}

// relay copies between a and b until either side closes.
func relay(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		dst.Close()
		src.Close()
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}

// Attach negotiates the connections and hands them to the kernel.
func Attach(ctx context.Context, dial Dialer, o AttachOptions) (*Attachment, error) {
	if o.Connections <= 0 {
		o.Connections = 1
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	index := -1
	if o.Device != "" && o.Device != "any" {
		n, ok := ParseDevice(o.Device)
		if !ok {
			return nil, fmt.Errorf("kernel: device %q: want /dev/nbdN or any", o.Device)
		}
		index = n
		if d := DeviceInfo(n); d.Connected {
			return nil, fmt.Errorf("kernel: %s is already connected (pid %d); disconnect it first", d.Path, d.PID)
		}
	}
	a := &Attachment{opts: o, dial: dial}
	// A device let go a moment ago may end a new NBD_DO_IT at once, with
	// the sockets it was given shut down: try again on new ones.
	for attempt := 1; ; attempt++ {
		err := a.connect(ctx, index)
		if err == nil {
			break
		}
		if !errors.Is(err, errEndedAtOnce) || attempt == attachAttempts || ctx.Err() != nil {
			return nil, err
		}
		o.Logf("%v; attaching again on new connections (attempt %d of %d)", err, attempt+1, attachAttempts)
		time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
	}
	a.Path = "/dev/nbd" + strconv.Itoa(a.Index)
	a.rescan()
	return a, nil
}

// attachAttempts bounds the tries of an attach whose device ended at once.
const attachAttempts = 3

// errEndedAtOnce is an ioctl attach whose NBD_DO_IT returned before the
// device started.
var errEndedAtOnce = errors.New("NBD_DO_IT ended before the device started")

// connect negotiates the connections and hands them to the kernel as
// device index (-1 for any free one).
func (a *Attachment) connect(ctx context.Context, index int) error {
	o := a.opts
	var conns []kernelConn
	defer func() {
		for _, c := range conns {
			c.file.Close()
		}
	}()
	for i := 0; i < o.Connections; i++ {
		info, kc, err := a.negotiate(ctx)
		if err != nil {
			return fmt.Errorf("kernel: connection %d: %w", i+1, err)
		}
		conns = append(conns, kc)
		a.NeedsProcess = a.NeedsProcess || kc.proxied
		if i == 0 {
			a.Info = info
			if o.Connections > 1 && info.Flags&nbd.FlagCanMultiConn == 0 {
				return fmt.Errorf("kernel: the server does not advertise NBD_FLAG_CAN_MULTI_CONN, so %d connections could see different data; use 1", o.Connections)
			}
		}
	}
	a.Connections = len(conns)
	flags := a.Info.Flags
	if o.ReadOnly {
		flags |= nbd.FlagReadOnly
	}
	// The logical block size is what partition tables count in: 512,
	// as with nbd-client and qemu-nbd, unless the server needs more.
	bs := o.BlockSize
	if bs == 0 {
		bs = uint64(max(a.Info.MinBlock, 512))
	}
	if bs < uint64(a.Info.MinBlock) || bs < 512 || bs > 4096 || bs&(bs-1) != 0 {
		return fmt.Errorf("kernel: block size %d: want a power of two from 512 to 4096, at least the server's minimum %d", bs, a.Info.MinBlock)
	}
	cfg := Config{Index: index, Size: uint64(a.Info.Size), BlockSize: bs, ServerFlags: uint16(flags),
		Timeout: o.Timeout, DeadTimeout: o.DeadTimeout, Backend: o.Backend}
	for _, c := range conns {
		cfg.Sockets = append(cfg.Sockets, c.file)
	}
	iface := o.Interface
	if iface == "" || iface == InterfaceAuto || iface == InterfaceNetlink {
		nl, err := OpenNetlink()
		switch {
		case err == nil:
			defer nl.Close()
			idx, err := connectWhenFree(ctx, nl, cfg, o.Logf)
			if err != nil {
				return err
			}
			a.Index, a.Interface = idx, InterfaceNetlink
		case errors.Is(err, ErrNoFamily) && iface != InterfaceNetlink:
			o.Logf("no nbd netlink family; falling back to the ioctl interface")
			iface = InterfaceIoctl
		default:
			return err
		}
	}
	if iface == InterfaceIoctl {
		return a.attachIoctl(cfg)
	}
	return nil
}

// busyWait bounds how long connectWhenFree waits for a device's last
// opener to let go.
const busyWait = 15 * time.Second

// connectWhenFree sends NBD_CMD_CONNECT for cfg, and where the kernel
// answers EBUSY for a given device, tries again until busyWait has
// passed. Right after a disconnect the device may still be open: udev
// probes it as it changes (blkid), and the kernel keeps the old
// configuration, refusing a new one with EBUSY, until the last opener
// closes it. On a system with udev a disconnect followed at once by a
// connect to the same device met it every time on 7.x kernels.
func connectWhenFree(ctx context.Context, nl *Netlink, cfg Config, logf func(string, ...any)) (int, error) {
	deadline := time.Now().Add(busyWait)
	for waited := false; ; {
		idx, err := nl.Connect(cfg)
		if err == nil || !errors.Is(err, syscall.EBUSY) || cfg.Index < 0 {
			return idx, err
		}
		if time.Now().After(deadline) {
			return idx, fmt.Errorf("%w: /dev/nbd%d is still configured or open %s after the kernel first refused it (nbdlab list, and fuser -v /dev/nbd%d, say who has it)", err, cfg.Index, busyWait, cfg.Index)
		}
		if !waited && logf != nil {
			logf("/dev/nbd%d is busy (still open after a disconnect, by udev or another process?); waiting up to %s", cfg.Index, busyWait)
			waited = true
		}
		select {
		case <-ctx.Done():
			return idx, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
