package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/kernel"
)

const (
	connectUsage = "DEVICE|any URI [--connections N] [--timeout D] [--dead-timeout D] [--persist] [--read-only] [--block-size B] [--interface auto|netlink|ioctl]"
	attachUsage  = "[--device DEVICE|any] [--read-only] [--connections N] IMAGE"
	// daemonEnv marks the background half of connect and attach; its
	// value is the descriptor on which it reports readiness.
	daemonEnv = "NBDLAB_DAEMON_READY_FD"
)

// attachFlags are the flags connect and attach share.
type attachFlags struct {
	kernel.AttachOptions
	persist bool
}

func (f *attachFlags) register(fs interface {
	IntVar(*int, string, int, string)
	DurationVar(*time.Duration, string, time.Duration, string)
	BoolVar(*bool, string, bool, string)
	Uint64Var(*uint64, string, uint64, string)
	StringVar(*string, string, string, string)
}) {
	fs.IntVar(&f.Connections, "connections", 1, "connections to the server (more than 1 needs NBD_FLAG_CAN_MULTI_CONN)")
	fs.DurationVar(&f.Timeout, "timeout", 0, "per-request timeout (default: the kernel's, 30s)")
	fs.DurationVar(&f.DeadTimeout, "dead-timeout", 0, "how long I/O waits for a dead connection to be replaced before failing with EIO")
	fs.BoolVar(&f.ReadOnly, "read-only", false, "attach read-only")
	fs.Uint64Var(&f.BlockSize, "block-size", 0, "logical block size, 512 to 4096 (default: 512, or the export's minimum)")
	fs.StringVar(&f.Interface, "interface", "auto", "kernel interface: netlink, ioctl, or auto (netlink, else ioctl)")
}

func runConnect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("connect", connectUsage, stderr)
	var f attachFlags
	f.register(fs)
	fs.BoolVar(&f.persist, "persist", false, "reconnect when the server goes away, so I/O resumes after a restart")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usagef("want DEVICE (or any) and URI")
	}
	u, err := nbd.ParseURI(pos[1])
	if err != nil {
		return usageError{err.Error()}
	}
	cc, err := u.ClientConfig()
	if err != nil {
		return err
	}
	f.Device, f.Client, f.Backend = pos[0], *cc, u.String()
	dial := func(ctx context.Context) (net.Conn, error) { return u.DialConn(ctx) }
	needsProcess := f.persist || u.TLS || f.Interface == "ioctl"
	if !needsProcess && f.Interface == "auto" {
		if nl, err := kernel.Dial(); err != nil {
			needsProcess = true // the ioctl fallback holds the device
		} else {
			nl.Close()
		}
	}
	return attachAndHold(ctx, stdout, stderr, f, dial, u.String(), needsProcess, nil)
}

func runAttach(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("attach", attachUsage, stderr)
	var f attachFlags
	fs.StringVar(&f.Device, "device", "any", "`DEVICE` to use: /dev/nbdN or any")
	f.register(fs)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want one IMAGE")
	}
	image, err := filepath.Abs(pos[0])
	if err != nil {
		return err
	}
	if err := checkRawImage(image); err != nil {
		return err
	}
	f.Backend = image
	var srv *nbd.Server
	setup := func() (kernel.Dialer, error) {
		b, err := nbd.OpenFile(image, f.ReadOnly)
		if err != nil {
			return nil, err
		}
		srv = &nbd.Server{Exports: []*nbd.Export{{Name: filepath.Base(image), Backend: b, ReadOnly: f.ReadOnly}},
			Logger: slog.New(slog.NewTextHandler(stderr, nil))}
		return func(ctx context.Context) (net.Conn, error) {
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return nil, err
			}
			ends := make([]net.Conn, 2)
			for i, fd := range fds {
				file := os.NewFile(uintptr(fd), "nbd-attach")
				ends[i], err = net.FileConn(file)
				file.Close()
				if err != nil {
					return nil, err
				}
			}
			go srv.ServeConn(context.Background(), ends[0])
			return ends[1], nil
		}, nil
	}
	return attachAndHold(ctx, stdout, stderr, f, nil, image, true, setup)
}

// checkRawImage refuses formats the file backend would serve as raw bytes.
func checkRawImage(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open image: %w", err)
	}
	defer f.Close()
	var magic [4]byte
	io.ReadFull(f, magic[:])
	if string(magic[:]) == "QFI\xfb" {
		return fmt.Errorf("%s is a qcow2 image; nbdlab serves raw images and block devices: convert it with qemu-img convert -O raw %s IMAGE.raw", path, path)
	}
	return nil
}

// attachAndHold attaches the device. When the device needs a living
// process, it starts itself again in the background to be that process
// and returns once the device is ready.
func attachAndHold(ctx context.Context, stdout, stderr io.Writer, f attachFlags, dial kernel.Dialer, source string,
	needsProcess bool, setup func() (kernel.Dialer, error)) error {
	readyFD := os.Getenv(daemonEnv)
	if needsProcess && readyFD == "" {
		return spawnDaemon(stdout)
	}
	report := func(string) {}
	if readyFD != "" {
		w := os.NewFile(3, "ready")
		report = func(msg string) { fmt.Fprintln(w, msg); w.Close() }
	}
	fail := func(err error) error { report("error " + err.Error()); return err }
	if setup != nil {
		var err error
		if dial, err = setup(); err != nil {
			return fail(err)
		}
	}
	f.Logf = func(format string, a ...any) { fmt.Fprintf(stderr, "nbdlab: "+format+"\n", a...) }
	a, err := kernel.Attach(ctx, dial, f.AttachOptions)
	if err != nil {
		return fail(err)
	}
	st := kernel.State{Device: a.Path, Source: source, Connections: a.Connections, Interface: a.Interface,
		Persist: f.persist, ReadOnly: f.ReadOnly, Started: time.Now()}
	if readyFD != "" {
		st.PID = os.Getpid()
		st.Log = os.Getenv("NBDLAB_DAEMON_LOG")
	}
	if err := kernel.SaveState(a.Index, st); err != nil {
		return fail(err)
	}
	if readyFD == "" {
		fmt.Fprintln(stdout, a.Path)
		return nil
	}
	report("ok " + a.Path)
	f.Logf("%s attached (%s, %d connections, %d bytes)", a.Path, a.Interface, a.Connections, a.Info.Size)
	if f.persist {
		err = a.Persist(ctx)
	} else {
		err = a.Wait(ctx)
	}
	if ctx.Err() != nil && setup != nil {
		// Stopped while serving: the device cannot outlive its server.
		kernel.Disconnect(a.Index)
	}
	if cur, ok := kernel.LoadState(a.Index); ok && cur.PID == os.Getpid() {
		kernel.RemoveState(a.Index)
	}
	f.Logf("%s: done (%v)", a.Path, err)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// spawnDaemon starts this command again, detached, and waits for it to say
// that the device is ready.
func spawnDaemon(stdout io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(kernel.StateDir, 0o755); err != nil {
		return err
	}
	logf, err := os.CreateTemp(kernel.StateDir, "daemon-*.log")
	if err != nil {
		return err
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), daemonEnv+"=3", "NBDLAB_DAEMON_LOG="+logf.Name())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start background process: %w", err)
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	r.Close()
	cmd.Process.Release()
	line = strings.TrimSpace(line)
	if dev, ok := strings.CutPrefix(line, "ok "); ok {
		fmt.Fprintln(stdout, dev)
		return nil
	}
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		return errors.New(msg)
	}
	b, _ := os.ReadFile(logf.Name())
	return fmt.Errorf("background process exited before the device was ready; its log %s:\n%s", logf.Name(), b)
}

func runDisconnect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("disconnect", "DEVICE", stderr)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want one DEVICE")
	}
	n, ok := kernel.ParseDevice(pos[0])
	if !ok {
		return usagef("device %q: want /dev/nbdN", pos[0])
	}
	return detach(ctx, n)
}

// detach disconnects device n and waits for the process that held it.
func detach(ctx context.Context, n int) error {
	st, known := kernel.LoadState(n)
	d := kernel.DeviceInfo(n)
	if !d.Connected && !known {
		return fmt.Errorf("/dev/nbd%d is not connected", n)
	}
	if d.Connected {
		if err := kernel.Disconnect(n); err != nil {
			return err
		}
	}
	if st.PID > 0 {
		deadline := time.Now().Add(10 * time.Second)
		for processAlive(st.PID) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if processAlive(st.PID) {
			syscall.Kill(st.PID, syscall.SIGTERM)
		}
	}
	return kernel.RemoveState(n)
}

func processAlive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

func runList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("list", "", stderr)
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	devs, err := kernel.Devices()
	if err != nil {
		return err
	}
	if len(devs) == 0 {
		return errors.New("no /dev/nbd* devices: load the module (modprobe nbd)")
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSTATE\tSIZE\tCONNECTIONS\tPID\tBACKEND")
	for _, d := range devs {
		state, conns, pid := "disconnected", "-", "-"
		if d.Connected {
			state, pid = "connected", fmt.Sprint(d.PID)
		}
		if st, ok := kernel.LoadState(d.Index); ok {
			conns = fmt.Sprintf("%d (%s)", st.Connections, st.Interface)
			if st.PID > 0 {
				pid = fmt.Sprint(st.PID)
			}
			if st.Persist {
				state += ",persist"
			}
		}
		backend := d.Backend
		if st, ok := kernel.LoadState(d.Index); ok && backend == "" {
			backend = st.Source
		}
		if backend == "" {
			backend = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", d.Path, state, d.Size, conns, pid, backend)
	}
	return tw.Flush()
}
