package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nbdlab/nbdlab/internal/cachedir"
	"github.com/nbdlab/nbdlab/kernels"
)

// Share is a host directory made writable in the guest.
type Share struct {
	Host  string // directory on the host
	Guest string // where it appears in the guest; default the same path
}

// Config describes one VM run. The zero value boots the newest installed
// kernel with 1 GiB and 2 CPUs, and never times out.
type Config struct {
	// Kernel is what kernels.Find resolves: "" (the newest installed), a
	// release installed or fetched, debian:SUITE[/RELEASE], or a bzImage
	// path with Modules.
	Kernel  string
	Modules string // modules directory, with a bzImage path
	Memory  string // QEMU -m; default "1024M"
	CPUs    int    // default 2
	Timeout time.Duration
	Shares  []Share
	// NIC, if set, gives the guest a virtio-net interface on a QEMU
	// socket netdev (see LinkedNICs).
	NIC *NIC
	// Init is the static binary that runs as the guest's init; default
	// this executable. It must call GuestInit when IsGuestInit.
	Init string
	// Accel is "kvm", "tcg", or "" to use KVM only where a probe showed
	// that a stock kernel boots under it.
	Accel string
	// InstructionClock, under TCG, makes the guest's time count the
	// instructions it executes, ICountNs each (QEMU -icount), while it
	// runs; idle, its time goes at the host's pace. A benchmark inside
	// the guest then measures the work done, not the host's speed at the
	// time, and repeats to a percent or two. Ignored under KVM.
	InstructionClock bool
	// NoUdev boots the guest without systemd-udevd: device nodes come
	// from devtmpfs alone, partitions appear only when something rereads
	// the table, and nothing opens a device behind the command's back.
	// By default udevd runs with the host's rules, as on a booted system.
	NoUdev bool
	Env    []string // guest command's environment; default os.Environ()
	Dir    string   // guest command's directory; default the current one
	Stdout io.Writer
	Stderr io.Writer
	// KernelLog keeps the guest kernel's console in this file; by default
	// it goes to a temporary file that is removed.
	KernelLog string
	// CacheDir holds initramfs images and the KVM probe's answer; default
	// the user cache directory's nbdlab/vm.
	CacheDir string
	// Logf, if set, receives the QEMU command line and progress notes.
	Logf func(format string, args ...any)
}

// Result is how a guest command ended.
type Result struct {
	ExitCode int
	Kernel   kernels.Kernel
	Accel    string        // "kvm", "tcg", or "tcg+icount" (InstructionClock)
	Boot     time.Duration // QEMU start to the guest init's first word
	Wall     time.Duration // QEMU start to exit
}

// TimeoutError is returned when the guest did not finish in time.
type TimeoutError struct {
	Timeout time.Duration
	Tail    string
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("vm: timed out after %s; QEMU killed; last kernel lines:\n%s", e.Timeout, e.Tail)
}

// PanicError is returned when the guest kernel panicked.
type PanicError struct{ Tail string }

func (e *PanicError) Error() string {
	return "vm: guest kernel panicked; last kernel lines:\n" + e.Tail
}

// GuestError is returned when the guest init could not set up the command,
// for example because a module is missing.
type GuestError struct {
	Msg  string
	Tail string
}

func (e *GuestError) Error() string {
	return fmt.Sprintf("vm: guest init failed: %s\nlast kernel lines:\n%s", e.Msg, e.Tail)
}

// Run boots a VM and runs argv in it, streaming its output to the
// configured writers. A nil error means the command ran; its status is in
// Result.ExitCode.
func Run(ctx context.Context, cfg Config, argv ...string) (*Result, error) {
	if len(argv) == 0 {
		return nil, errors.New("vm: no command to run")
	}
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	k, err := kernels.Find(cfg.Kernel, cfg.Modules, kernels.Store{})
	if err != nil {
		return nil, err
	}
	initrd, err := Initramfs(k, cfg.Init, cfg.CacheDir)
	if err != nil {
		return nil, err
	}
	accel := cfg.Accel
	if accel == "" {
		accel = chooseAccel(ctx, cfg, k, initrd)
	}
	res, err := boot(ctx, cfg, k, initrd, accel, argv)
	var pe *PanicError
	if errors.As(err, &pe) && res != nil && res.Boot == 0 {
		// The kernel died before the init started, so nothing of the
		// command ran: an emulation hiccup, not the command's doing.
		cfg.Logf("guest kernel panicked during boot, before the command started; booting again")
		res, err = boot(ctx, cfg, k, initrd, accel, argv)
	}
	return res, err
}

func (cfg *Config) defaults() error {
	if cfg.Memory == "" {
		cfg.Memory = "1024M"
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	if cfg.Dir == "" {
		cfg.Dir, _ = os.Getwd()
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Init == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("vm: find own executable for the guest init: %w", err)
		}
		cfg.Init = exe
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = cachedir.Dir("vm")
	}
	for i, s := range cfg.Shares {
		fi, err := os.Stat(s.Host)
		if err != nil || !fi.IsDir() {
			return fmt.Errorf("vm: share %s: not a directory on the host", s.Host)
		}
		abs, _ := filepath.Abs(s.Host)
		cfg.Shares[i].Host = abs
		if s.Guest == "" {
			cfg.Shares[i].Guest = abs
		}
		if !filepath.IsAbs(cfg.Shares[i].Guest) {
			return fmt.Errorf("vm: share %s: guest path %q is not absolute", s.Host, s.Guest)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return fmt.Errorf("vm: qemu-system-x86_64 not found (apt-get install qemu-system-x86): %w", err)
	}
	return nil
}

// qemuOpt escapes a value inside a QEMU option list, where a comma
// separates options and ",," stands for a comma.
func qemuOpt(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// qemuArgs is the QEMU command line for one run.
func qemuArgs(cfg Config, k kernels.Kernel, initrd, accel, sock, klog string) []string {
	cpu := "max"
	if cfg.InstructionClock && accel == "tcg" {
		// Without ERMS and FSRM the kernel copies with rep movsq, which
		// the instruction counter counts once per 8 bytes, not once per
		// byte as rep movsb.
		cpu += ",-erms,-fsrm"
	}
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "pc", "-accel", accelOpt(accel), "-cpu", cpu,
		"-smp", strconv.Itoa(cfg.CPUs), "-m", cfg.Memory,
		"-kernel", k.Image, "-initrd", initrd,
		// net.ifnames=0: udev in the guest keeps the kernel's eth0 rather
		// than rename a lab NIC to enp0s*, which the lab's shaping names.
		"-append", "console=ttyS0 loglevel=4 panic=-1 oops=panic rdinit=/init " +
			"i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd tsc=reliable no_timer_check net.ifnames=0",
		"-chardev", "file,id=klog,path=" + qemuOpt(klog), "-serial", "chardev:klog",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=ctl,path=" + qemuOpt(sock),
		"-device", "virtserialport,chardev=ctl,name=" + portName,
		"-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
		"-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
	}
	if cfg.InstructionClock && accel == "tcg" {
		args = append(args, "-icount", "shift="+strconv.Itoa(icountShift))
	}
	if n := cfg.NIC; n != nil {
		args = append(args,
			"-netdev", "socket,id=net0,udp="+n.Remote+",localaddr="+n.Local,
			"-device", "virtio-net-pci,netdev=net0,mac="+n.MAC)
	}
	for i, s := range cfg.Shares {
		id := fmt.Sprintf("share%d", i)
		args = append(args,
			"-fsdev", "local,id="+id+",path="+qemuOpt(s.Host)+",security_model=none,multidevs=remap",
			"-device", "virtio-9p-pci,fsdev="+id+",mount_tag="+id)
	}
	return args
}

func boot(ctx context.Context, cfg Config, k kernels.Kernel, initrd, accel string, argv []string) (*Result, error) {
	tmp, err := os.MkdirTemp("", "nbdlab-vm-")
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	defer os.RemoveAll(tmp)
	sock := filepath.Join(tmp, "ctl.sock")
	klog := cfg.KernelLog
	if klog == "" {
		klog = filepath.Join(tmp, "kernel.log")
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	defer l.Close()

	args := qemuArgs(cfg, k, initrd, accel, sock, klog)
	cfg.Logf("qemu-system-x86_64 %s", shellQuote(args))
	runCtx := ctx
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	var qemuOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qemuOut, &qemuOut
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("vm: start QEMU: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	res := &Result{Kernel: k, Accel: accel}
	if cfg.InstructionClock && accel == "tcg" {
		res.Accel = "tcg+icount"
	}

	conns := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			conns <- c
		}
	}()
	var conn net.Conn
	select {
	case conn = <-conns:
	case err := <-exited:
		return nil, fmt.Errorf("vm: QEMU exited before the guest started (%v):\n%s", err, qemuOut.String())
	case <-runCtx.Done():
		cmd.Process.Kill()
		<-exited
		return nil, runCtx.Err()
	}
	defer conn.Close()

	cfgJSON, _ := json.Marshal(guestConfig{Args: argv, Env: cfg.Env, Dir: cfg.Dir, Shares: guestShares(cfg.Shares), Release: k.Release, Modules: k.Modules, Merged: sameOutput(cfg.Stdout, cfg.Stderr), Udev: !cfg.NoUdev})
	fw := &frameWriter{w: conn}
	type outcome struct {
		code    int
		initMsg string
		err     error
	}
	done := make(chan outcome, 1)
	go func() {
		var o outcome
		for {
			typ, p, err := readFrame(conn)
			if err != nil {
				o.err = err
				done <- o
				return
			}
			switch typ {
			case frameHello:
				res.Boot = time.Since(start)
				cfg.Logf("guest init up after %s (%s)", res.Boot.Round(time.Millisecond), accel)
				fw.send(frameConfig, cfgJSON)
			case frameStdout:
				cfg.Stdout.Write(p)
			case frameStderr:
				cfg.Stderr.Write(p)
			case frameInit:
				o.initMsg += string(p)
			case frameExit:
				o.code, _ = strconv.Atoi(string(p))
				fw.send(frameAck, nil)
				done <- o
				return
			}
		}
	}()

	tail := func() string { return logTail(klog, 25) }
	select {
	case o := <-done:
		if o.err == nil {
			// The guest powers off after the ack; give it a moment.
			select {
			case <-exited:
			case <-time.After(15 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
			res.Wall = time.Since(start)
			if o.initMsg != "" {
				return res, &GuestError{Msg: o.initMsg, Tail: tail()}
			}
			res.ExitCode = o.code
			return res, nil
		}
		// The port closed without an exit status: QEMU is going away.
		<-exited
	case <-exited:
	case <-runCtx.Done():
		cmd.Process.Signal(syscall.SIGKILL)
		<-exited
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &TimeoutError{Timeout: cfg.Timeout, Tail: tail()}
	}
	res.Wall = time.Since(start)
	if report, ok := panicReport(klog); ok {
		return res, &PanicError{Tail: report}
	}
	t := tail()
	if i := strings.Index(t, "nbdlab-init: "); i >= 0 {
		return res, &GuestError{Msg: strings.SplitN(t[i:], "\n", 2)[0], Tail: t}
	}
	return res, fmt.Errorf("vm: guest stopped without reporting an exit status (QEMU: %s)\nlast kernel lines:\n%s",
		strings.TrimSpace(qemuOut.String()), t)
}

func guestShares(shares []Share) []guestShare {
	var out []guestShare
	for i, s := range shares {
		out = append(out, guestShare{Tag: fmt.Sprintf("share%d", i), Path: s.Guest})
	}
	return out
}

// panicReport returns the kernel log from a few lines before its panic
// message, if it has one.
func panicReport(path string) (string, bool) {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	for i, l := range lines {
		if strings.Contains(l, "Kernel panic") {
			from := max(0, i-5)
			return strings.Join(lines[from:min(len(lines), from+40)], "\n"), true
		}
	}
	return "", false
}

// logTail returns the last n lines of a file.
func logTail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func shellQuote(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if strings.ContainsAny(a, " \t'\"$\\") {
			b.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "'")
		} else {
			b.WriteString(a)
		}
	}
	return b.String()
}

// icountShift is QEMU's -icount shift: an instruction takes 2^3 = 8 ns
// of guest time (125 million a second), about the pace TCG runs the
// guest at here, so guest and host time stay close.
const icountShift = 3

// ICountNs is the guest time one instruction takes under
// Config.InstructionClock.
const ICountNs = 1 << icountShift

// accelOpt is QEMU's -accel value. TCG runs single-threaded: with one host
// thread per vCPU (MTTCG), the kernel's live code patching (text_poke_bp)
// can race with the other vCPU executing the patched code, which then
// oopses on a stray int3 now and then.
func accelOpt(accel string) string {
	if accel == "tcg" {
		return "tcg,thread=single"
	}
	return accel
}

// sameOutput tells whether stdout and stderr are one destination: the same
// writer, or files that are the same open file or the same terminal, pipe
// or file (as after 2>&1).
func sameOutput(stdout, stderr io.Writer) bool {
	if stdout == stderr {
		return true
	}
	f1, ok1 := stdout.(*os.File)
	f2, ok2 := stderr.(*os.File)
	if !ok1 || !ok2 {
		return false
	}
	s1, err1 := f1.Stat()
	s2, err2 := f2.Stat()
	return err1 == nil && err2 == nil && os.SameFile(s1, s2)
}
