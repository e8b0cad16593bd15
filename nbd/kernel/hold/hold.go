//go:build linux

// Package hold keeps devices attached for the nbdlab command: when a
// device works only while a process lives (the ioctl interface, a TLS
// relay, an image served from this process, reconnection with --persist),
// nbdlab starts itself again in the background to be that process, and
// records what it attached in /run/nbdlab for list and detach.
//
// The background copy runs with the same arguments and NBDLAB_HOLD_READY_FD
// in its environment; it reports on that descriptor when the device is
// ready (package ready). Everything here needs root.
package hold

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nbdlab/nbdlab/internal/procfs"
	"github.com/nbdlab/nbdlab/internal/ready"
	"github.com/nbdlab/nbdlab/nbd/kernel"
)

// Environment of the background copy.
const (
	readyEnv = "NBDLAB_HOLD_READY_FD" // the descriptor it reports readiness on
	logEnv   = "NBDLAB_HOLD_LOG"      // where its output goes
)

// Request is one device to attach.
type Request struct {
	Options kernel.AttachOptions
	// Dial opens connections to the server; Open, when set, is called
	// instead in the process that will hold the device, to open what it
	// serves and return the Dialer (kernel.ServeDialer).
	Dial kernel.Dialer
	Open func() (kernel.Dialer, error)
	// NeedsProcess is true when the device works only while a process
	// lives; Open implies it.
	NeedsProcess bool
	// Persist reconnects when the server goes away (kernel.Attachment.Persist).
	Persist bool
	// Source names the backend in the state (a URI or an image).
	Source string
}

// Background reports whether this process is the background copy.
func Background() bool { return os.Getenv(readyEnv) != "" }

// Attach attaches the device. In the foreground, a device that needs a
// living process is handed to a background copy of this command; Attach
// returns the device's path once it is ready. In the background copy it
// attaches, reports, and holds the device until it is disconnected or ctx
// ends, then returns an empty path.
func Attach(ctx context.Context, r Request) (string, error) {
	if err := kernel.Present(); err != nil {
		return "", err
	}
	needsProcess := r.NeedsProcess || r.Open != nil || r.Persist
	if needsProcess && !Background() {
		return spawn(ctx)
	}
	var sig *ready.Signal
	if fd, err := strconv.Atoi(os.Getenv(readyEnv)); err == nil {
		sig = ready.Open(fd)
	}
	fail := func(err error) (string, error) {
		if sig != nil {
			sig.Fail(err)
		}
		return "", err
	}
	if r.Open != nil {
		var err error
		if r.Dial, err = r.Open(); err != nil {
			return fail(err)
		}
	}
	logf := r.Options.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	a, err := kernel.Attach(ctx, r.Dial, r.Options)
	if err != nil {
		return fail(err)
	}
	st := State{Device: a.Path, Source: r.Source, Connections: a.Connections, Interface: a.Interface,
		Persist: r.Persist, ReadOnly: r.Options.ReadOnly, Started: time.Now(), NetNS: netNS()}
	if sig != nil {
		st.PID, st.Log = os.Getpid(), os.Getenv(logEnv)
	}
	if err := Save(a.Index, st); err != nil {
		return fail(err)
	}
	if sig == nil {
		return a.Path, nil
	}
	sig.OK(a.Path)
	logf("%s attached (%s, %d connections, %d bytes)", a.Path, a.Interface, a.Connections, a.Info.Size)
	if r.Persist {
		err = a.Persist(ctx)
	} else {
		err = a.Wait(ctx)
	}
	if ctx.Err() != nil && r.Open != nil {
		// Stopped while serving: the device cannot outlive its server.
		kernel.Disconnect(a.Index)
	}
	if cur, ok := Load(a.Index); ok && cur.PID == os.Getpid() {
		Remove(a.Index)
	}
	logf("%s: done (%v)", a.Path, err)
	if errors.Is(err, context.Canceled) {
		return "", nil
	}
	return "", err
}

// spawn starts this command again, detached, with its output in a log
// under StateDir, and waits for it to report the device ready.
func spawn(ctx context.Context) (string, error) {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return "", fmt.Errorf("hold: %w", err)
	}
	logf, err := os.CreateTemp(StateDir, "daemon-*.log")
	if err != nil {
		return "", fmt.Errorf("hold: %w", err)
	}
	defer logf.Close()
	rp, err := ready.NewPipe()
	if err != nil {
		return "", err
	}
	defer rp.Close()
	cmd := exec.Command(procfs.Exe, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), readyEnv+"=3", logEnv+"="+logf.Name())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{rp.Child()}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("hold: start background process: %w", err)
	}
	defer cmd.Process.Release()
	dev, err := rp.Wait(ctx)
	if errors.Is(err, ready.ErrExited) {
		b, _ := os.ReadFile(logf.Name())
		return "", fmt.Errorf("background process exited before the device was ready; its log %s:\n%s", logf.Name(), b)
	}
	return dev, err
}

// Detach disconnects device n and waits for the process that held it, if
// any, to end (SIGTERM after 10 s), then forgets it.
func Detach(ctx context.Context, n int) error {
	st, known := Load(n)
	if _, err := os.Stat(fmt.Sprintf("/sys/block/nbd%d", n)); err != nil && !known {
		if err := kernel.Present(); err != nil {
			return err
		}
		return fmt.Errorf("/dev/nbd%d does not exist (nbdlab list shows the devices there are)", n)
	}
	d := kernel.DeviceInfo(n)
	if !d.Connected && !known {
		return fmt.Errorf("/dev/nbd%d is not connected", n)
	}
	// A mounted device would keep its requests waiting for their timeout
	// and the disconnect would not finish: say so at once instead.
	if mounted, err := kernel.MountedParts(n); err == nil && len(mounted) > 0 {
		return fmt.Errorf("%s: unmount it first", strings.Join(mounted, ", "))
	}
	// So would one that md or device-mapper holds, for as long as they
	// send it I/O: name them instead.
	if hs := kernel.Holders(n); len(hs) > 0 {
		why := make([]string, len(hs))
		for i, h := range hs {
			why[i] = h.String()
		}
		return fmt.Errorf("/dev/nbd%d is in use: %s", n, strings.Join(why, "; "))
	}
	if d.Connected {
		if err := kernel.Disconnect(n); err != nil {
			if st.PID > 0 {
				return fmt.Errorf("%w (held by pid %d, log %s)", err, st.PID, st.Log)
			}
			return err
		}
	}
	if st.PID > 0 {
		deadline := time.Now().Add(10 * time.Second)
		for procfs.Alive(st.PID) && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		if procfs.Alive(st.PID) {
			syscall.Kill(st.PID, syscall.SIGTERM)
		}
	}
	return Remove(n)
}
