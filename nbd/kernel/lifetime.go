//go:build linux

package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// rescan asks the kernel to read the partition table, so /dev/nbdNpM
// appear when the module has max_part.
func (a *Attachment) rescan() {
	for i := 0; i < 50; i++ {
		if d := DeviceInfo(a.Index); d.Size > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	f, err := os.OpenFile(a.Path, os.O_RDONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKRRPART, 0)
}

// Wait blocks until the device is disconnected or ctx ends.
func (a *Attachment) Wait(ctx context.Context) error {
	if a.ioctlc != nil {
		select {
		case err := <-a.ioctlc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if !DeviceInfo(a.Index).Connected {
				return nil
			}
		}
	}
}

// Persist keeps the device alive across server restarts: on each
// NBD_CMD_LINK_DEAD for it, it reconnects with back-off and hands the new
// connection over with NBD_CMD_RECONFIGURE. It returns when the device is
// disconnected or ctx ends.
func (a *Attachment) Persist(ctx context.Context) error {
	if a.Interface != InterfaceNetlink {
		return errors.New("kernel: reconnecting needs the netlink interface")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dead, err := WatchLinkDead(ctx)
	if err != nil {
		return err
	}
	gone := make(chan struct{})
	go func() {
		a.Wait(ctx)
		close(gone)
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-gone:
			return nil
		case idx, ok := <-dead:
			if !ok {
				return errors.New("kernel: LINK_DEAD watch ended")
			}
			if idx != a.Index {
				continue
			}
			a.opts.Logf("nbd%d: a connection died; reconnecting", a.Index)
			if err := a.reconnect(ctx, gone); err != nil {
				return err
			}
		}
	}
}

func (a *Attachment) reconnect(ctx context.Context, gone <-chan struct{}) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := a.reconnectOnce(ctx)
		if err == nil {
			a.opts.Logf("nbd%d: reconnected (attempt %d)", a.Index, attempt)
			return nil
		}
		if errors.Is(err, syscall.EINVAL) && !DeviceInfo(a.Index).Connected {
			return nil // disconnected meanwhile
		}
		a.opts.Logf("nbd%d: reconnect attempt %d: %v; next in %s", a.Index, attempt, err, backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-gone:
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (a *Attachment) reconnectOnce(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, kc, err := a.negotiate(dctx)
	if err != nil {
		return err
	}
	defer kc.file.Close()
	if info.Size != a.Info.Size {
		return fmt.Errorf("kernel: the export is now %d bytes, was %d; not reattaching", info.Size, a.Info.Size)
	}
	nl, err := OpenNetlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	return nl.Reconfigure(a.Index, a.opts.Backend, []*os.File{kc.file})
}

// Disconnect disconnects device n, through netlink or, failing that, the
// ioctl interface, and returns once the device is free (no client, size
// 0), so that it can be connected again at once: the kernel finishes a
// netlink disconnect in the background.
func Disconnect(n int) error {
	nl, err := OpenNetlink()
	if err == nil {
		defer nl.Close()
		err = nl.Disconnect(n)
	}
	if err != nil {
		if ierr := IoctlDisconnect("/dev/nbd" + strconv.Itoa(n)); ierr != nil {
			return fmt.Errorf("%w; %w", err, ierr)
		}
	}
	deadline := time.Now().Add(disconnectWait)
	for {
		d := DeviceInfo(n)
		if !d.Connected && d.Size == 0 {
			dropPartitions(n)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kernel: %s still connected (%d bytes) %s after the disconnect; requests in flight may be waiting for their timeout",
				d.Path, d.Size, disconnectWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dropPartitions makes the kernel forget the partitions of disconnected
// device n: some kernels (6.1) keep /dev/nbdNpM after a disconnect, and a
// rescan of the now empty device removes them.
func dropPartitions(n int) {
	name := "nbd" + strconv.Itoa(n)
	if parts, _ := filepath.Glob("/sys/block/" + name + "/" + name + "p*"); len(parts) == 0 {
		return
	}
	f, err := os.OpenFile("/dev/"+name, os.O_RDONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKRRPART, 0)
}

// disconnectWait bounds how long Disconnect waits for the device to be
// free.
const disconnectWait = 30 * time.Second
