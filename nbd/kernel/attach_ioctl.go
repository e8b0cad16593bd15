//go:build linux

package kernel

import (
	"errors"
	"fmt"
	"strconv"
	"syscall"
	"time"
)

func (a *Attachment) attachIoctl(cfg Config) error {
	if cfg.Index < 0 {
		devs, err := Devices()
		if err != nil {
			return err
		}
		for _, d := range devs {
			if !d.Connected && d.Size == 0 {
				cfg.Index = d.Index
				break
			}
		}
		if cfg.Index < 0 {
			return errors.New("kernel: no free /dev/nbdN (load nbd with a larger nbds_max)")
		}
	}
	a.Index, a.Interface, a.NeedsProcess = cfg.Index, InterfaceIoctl, true
	path := "/dev/nbd" + strconv.Itoa(cfg.Index)
	// Right after a disconnect some kernels (6.1) refuse NBD_DO_IT with
	// EBUSY for a moment, while the last configuration is let go.
	deadline := time.Now().Add(3 * time.Second)
	for {
		a.ioctlc = make(chan error, 1)
		go func() { a.ioctlc <- IoctlConnect(path, cfg) }()
		err := waitStarted(cfg.Index, ioctlSize(cfg), a.ioctlc)
		if err == nil {
			return nil
		}
		if errors.Is(err, syscall.EBUSY) && time.Now().Before(deadline) && !DeviceInfo(cfg.Index).Connected {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		return err
	}
}

// waitStarted waits until device n has started under NBD_DO_IT with
// size bytes, or until NBD_DO_IT returns, whose result done carries.
// The kernel shows the pid of the task serving the device in sysfs
// before it sets the device's size: a device taken as started at its
// pid alone was, on a loaded host, still 0 bytes long when mkfs opened
// it ("Device size reported to be zero").
func waitStarted(n int, size int64, done <-chan error) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err == nil {
				err = fmt.Errorf("kernel: /dev/nbd%d: %w", n, errEndedAtOnce)
			}
			return err
		case <-tick.C:
			if d := DeviceInfo(n); d.Connected && d.Size == size {
				return nil
			}
		}
	}
}

// ioctlSize is the size in bytes that IoctlConnect gives the device, as
// sysfs shows it: whole blocks, in 512-byte sectors.
func ioctlSize(cfg Config) int64 {
	bs := ioctlBlockSize(cfg)
	return int64(cfg.Size/bs*bs) &^ 511
}
