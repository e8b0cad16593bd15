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
		err := waitStarted(cfg.Index, a.ioctlc)
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

// waitStarted waits until device n has started under NBD_DO_IT (the
// kernel then shows the pid of the task serving it in sysfs), or until
// NBD_DO_IT returns, whose result done carries.
func waitStarted(n int, done <-chan error) error {
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
			if DeviceInfo(n).Connected {
				return nil
			}
		}
	}
}
