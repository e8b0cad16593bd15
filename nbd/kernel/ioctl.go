//go:build linux

package kernel

import (
	"fmt"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// ioctl numbers of include/uapi/linux/nbd.h: _IO(0xab, n).
const (
	ioctlSetSock       = 0xab00
	ioctlSetBlkSize    = 0xab01
	ioctlDoIt          = 0xab03
	ioctlClearSock     = 0xab04
	ioctlClearQue      = 0xab05
	ioctlSetSizeBlocks = 0xab07
	ioctlDisconnect    = 0xab08
	ioctlSetTimeout    = 0xab09
	ioctlSetFlags      = 0xab0a
)

func ioctl(f *os.File, req, arg uintptr) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, arg)
	if errno != 0 {
		return errno
	}
	return nil
}

// ioctlBlockSize is the block size IoctlConnect sets: the configured one,
// or 512 bytes.
func ioctlBlockSize(cfg Config) uint64 {
	if cfg.BlockSize == 0 {
		return 512
	}
	return cfg.BlockSize
}

// IoctlConnect configures device path with the ioctl interface and then
// serves it: it blocks inside NBD_DO_IT until the device is disconnected.
func IoctlConnect(path string, cfg Config) error {
	// The kernel binds the device to the task (thread) that set it up and
	// refuses the others with EBUSY ("Device being setup by another
	// task"), so every ioctl here must come from one OS thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("kernel: open %s: %w", path, err)
	}
	defer f.Close()
	bs := ioctlBlockSize(cfg)
	steps := []struct {
		name     string
		req, arg uintptr
	}{
		{"NBD_CLEAR_SOCK", ioctlClearSock, 0},
		{"NBD_SET_BLKSIZE", ioctlSetBlkSize, uintptr(bs)},
		{"NBD_SET_SIZE_BLOCKS", ioctlSetSizeBlocks, uintptr(cfg.Size / bs)},
		{"NBD_SET_FLAGS", ioctlSetFlags, uintptr(cfg.ServerFlags)},
	}
	if cfg.Timeout > 0 {
		steps = append(steps, struct {
			name     string
			req, arg uintptr
		}{"NBD_SET_TIMEOUT", ioctlSetTimeout, uintptr(max(1, cfg.Timeout/time.Second))})
	}
	for _, s := range cfg.Sockets {
		steps = append(steps, struct {
			name     string
			req, arg uintptr
		}{"NBD_SET_SOCK", ioctlSetSock, s.Fd()})
	}
	for _, s := range steps {
		if err := ioctl(f, s.req, s.arg); err != nil {
			return fmt.Errorf("kernel: %s on %s: %w", s.name, path, err)
		}
	}
	err = doIt(f)
	ioctl(f, ioctlClearQue, 0)
	ioctl(f, ioctlClearSock, 0)
	if err != nil && err != unix.EPIPE && err != unix.ECONNRESET {
		return fmt.Errorf("kernel: NBD_DO_IT on %s: %w", path, err)
	}
	return nil
}

// doIt calls NBD_DO_IT on f with every signal blocked on this thread,
// which the caller has locked. NBD_DO_IT sleeps interruptibly until the
// device is disconnected, and a signal there ends it: the kernel shuts
// the device's sockets down and sets its size to 0. The Go runtime
// signals its own threads (SIGURG, to preempt a goroutine), and one sent
// as this thread entered the ioctl lands inside it: the device was lost a
// few milliseconds after it started (a kernel case sends it 50 signals).
// A thread with every signal blocked still dies with its process: exit
// and SIGKILL are not signals it can block.
func doIt(f *os.File) error {
	var all, old unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^all.Val[i] // every bit of a zero word
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &all, &old); err != nil {
		return fmt.Errorf("kernel: blocking signals for NBD_DO_IT: %w", err)
	}
	defer unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
	return ioctl(f, ioctlDoIt, 0)
}

// IoctlDisconnect asks the process inside NBD_DO_IT on path to stop.
func IoctlDisconnect(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("kernel: open %s: %w", path, err)
	}
	defer f.Close()
	if err := ioctl(f, ioctlDisconnect, 0); err != nil {
		return fmt.Errorf("kernel: NBD_DISCONNECT on %s: %w", path, err)
	}
	ioctl(f, ioctlClearSock, 0)
	return nil
}

// IoctlClearSock drops the sockets of the device at path (NBD_CLEAR_SOCK),
// as nbd-client -d does before NBD_DISCONNECT on old kernels.
func IoctlClearSock(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	defer f.Close()
	if err := ioctl(f, ioctlClearSock, 0); err != nil {
		return fmt.Errorf("kernel: NBD_CLEAR_SOCK on %s: %w", path, err)
	}
	return nil
}
