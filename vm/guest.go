package vm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Paths inside the initramfs.
const (
	initModules              = "modules"       // module files
	initOrder                = "modules/order" // their load order, one per line
	moduleInitCompressedFile = 4               // finit_module flag: let the kernel decompress
)

// InitExe runs, in the guest, the executable that is the guest's init
// (nbdlab itself), wherever it lies on the host, even under a /tmp the
// guest has a tmpfs over.
const InitExe = "/proc/1/exe"

// IsGuestInit reports whether this process is the init of a lab VM: PID 1
// running from the initramfs this package builds.
func IsGuestInit() bool {
	if os.Getpid() != 1 {
		return false
	}
	_, err := os.Stat("/" + initOrder)
	return err == nil
}

// GuestInit is the init of a lab VM. It loads the modules the initramfs
// carries, mounts the host's root read-only over 9p under a tmpfs overlay,
// switches to it, runs the command the host sent as a child, streams its
// output back and powers off. It never returns.
func GuestInit() {
	g := &guest{}
	code, err := g.run()
	if err != nil {
		g.fail(err)
		code = 255
	}
	if g.fw != nil {
		g.fw.send(frameExit, []byte(strconv.Itoa(code)))
		g.waitAck()
	}
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

type guest struct {
	port *os.File
	fw   *frameWriter
}

// fail reports an init error to the host, or to the kernel log if the port
// is not open yet.
func (g *guest) fail(err error) {
	msg := "nbdlab-init: " + err.Error()
	if g.fw != nil {
		g.fw.send(frameInit, []byte(msg))
		return
	}
	if k, kerr := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); kerr == nil {
		fmt.Fprintf(k, "<2>%s\n", msg)
		k.Close()
	}
}

func (g *guest) waitAck() {
	done := make(chan struct{})
	go func() {
		for {
			typ, _, err := readFrame(g.port)
			if err != nil || typ == frameAck {
				close(done)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
}

func mount(src, dst, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(src, dst, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s (%s, %q): %w", src, dst, fstype, data, err)
	}
	return nil
}

func (g *guest) run() (int, error) {
	for _, m := range []struct{ src, dst, typ string }{
		{"devtmpfs", "/dev", "devtmpfs"}, {"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"},
	} {
		if err := mount(m.src, m.dst, m.typ, 0, ""); err != nil {
			return 0, err
		}
	}
	if err := loadModules("/"+initModules, "/"+initOrder); err != nil {
		return 0, err
	}
	port, err := openPort(portName, 10*time.Second)
	if err != nil {
		return 0, err
	}
	g.port, g.fw = port, &frameWriter{w: port}
	g.fw.send(frameHello, nil)
	typ, p, err := readFrame(port)
	if err != nil || typ != frameConfig {
		return 0, fmt.Errorf("read configuration from host: type %q: %v", typ, err)
	}
	var cfg guestConfig
	if err := json.Unmarshal(p, &cfg); err != nil {
		return 0, fmt.Errorf("configuration from host: %w", err)
	}
	if err := switchRoot(cfg); err != nil {
		return 0, err
	}
	setupNetwork()
	if err := normalSystem(cfg.Udev); err != nil {
		return 0, err
	}
	return g.runCommand(cfg)
}

// normalSystem gives the guest what a booted Linux has and tests expect:
// /dev/fd and /dev/std* (bash's process substitution opens /dev/fd/N),
// debugfs and tracefs, and, unless asked not to, systemd-udevd with the
// host's rules, its devices settled: partitions appear and vanish as
// udev sees them, and udev opens devices as they change, as it does on
// every system users run nbd on.
func normalSystem(udev bool) error {
	for name, target := range map[string]string{"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, name); err != nil && !os.IsExist(err) {
			return fmt.Errorf("link %s: %w", name, err)
		}
	}
	for _, m := range []struct{ dst, typ string }{{"/sys/kernel/debug", "debugfs"}, {"/sys/kernel/tracing", "tracefs"}} {
		if err := mount(m.typ, m.dst, m.typ, 0, ""); err != nil {
			return err
		}
	}
	if !udev {
		return nil
	}
	udevd := "/lib/systemd/systemd-udevd"
	if _, err := os.Stat(udevd); err != nil {
		return fmt.Errorf("udev: %s is not on the host: install udev (apt-get install udev), or run the guest without it (nbdlab vm run --no-udev)", udevd)
	}
	for _, argv := range [][]string{
		{udevd, "--daemon", "--resolve-names=never"},
		// Block devices only: replaying every device of the machine took
		// 18 s a boot under TCG, and block devices are what the lab is about
		// (any added later, as nbd's are, udevd sees as they come).
		{"/bin/udevadm", "trigger", "--action=add", "--subsystem-match=block"},
		{"/bin/udevadm", "settle", "--timeout=60"},
	} {
		cmd := exec.Command(argv[0], argv[1:]...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("udev: %s: %w: %s", strings.Join(argv, " "), err, out)
		}
	}
	return nil
}

func loadModules(dir, orderFile string) error {
	b, err := os.ReadFile(orderFile)
	if err != nil {
		return err
	}
	for _, name := range strings.Fields(string(b)) {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return fmt.Errorf("module %s is missing from the initramfs: %w", name, err)
		}
		flags := 0
		if !strings.HasSuffix(name, ".ko") {
			flags = moduleInitCompressedFile
		}
		err = unix.FinitModule(int(f.Fd()), "", flags)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load module %s: %w", name, err)
		}
	}
	return nil
}

// openPort waits for the virtio-serial port called name and opens it.
func openPort(name string, timeout time.Duration) (*os.File, error) {
	deadline := time.Now().Add(timeout)
	for {
		ports, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, p := range ports {
			if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == name {
				dev := "/dev/" + filepath.Base(filepath.Dir(p))
				if f, err := os.OpenFile(dev, os.O_RDWR, 0); err == nil {
					return f, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no virtio-serial port %q after %s", name, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mount9p mounts a 9p share, retrying while its virtio device probes.
func mount9p(tag, dst string, ro bool, opts string) error {
	var flags uintptr
	if ro {
		flags = unix.MS_RDONLY
	}
	data := "trans=virtio,version=9p2000.L,msize=262144," + opts
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := mount(tag, dst, "9p", flags, data)
		if err == nil || time.Now().After(deadline) || !errors.Is(err, unix.ENOENT) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// switchRoot builds the guest's root from the host's and makes it /.
func switchRoot(cfg guestConfig) error {
	if err := mount9p("hostroot", "/lower", true, "cache=loose"); err != nil {
		return err
	}
	if err := mount("tmpfs", "/overlay", "tmpfs", 0, "mode=0755"); err != nil {
		return err
	}
	for _, d := range []string{"/overlay/upper", "/overlay/work"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := mount("overlay", "/newroot", "overlay", 0,
		"lowerdir=/lower,upperdir=/overlay/upper,workdir=/overlay/work"); err != nil {
		return err
	}
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		if err := mount(m, "/newroot"+m, "", unix.MS_MOVE, ""); err != nil {
			return err
		}
	}
	for _, m := range []struct{ dst, typ, data string }{
		{"/newroot/tmp", "tmpfs", "mode=1777"}, {"/newroot/run", "tmpfs", "mode=0755"},
		{"/newroot/dev/shm", "tmpfs", "mode=1777"}, {"/newroot/dev/pts", "devpts", "ptmxmode=0666"},
	} {
		if err := mount(m.typ, m.dst, m.typ, 0, m.data); err != nil {
			return err
		}
	}
	// A fresh /run has none of the directories a booted system's has;
	// tools lock there (qemu-nbd -c locks /var/lock, which is /run/lock).
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{"/newroot/run/lock", 0o1777}, {"/newroot/run/user", 0o755}} {
		if err := os.Mkdir(d.path, d.mode); err != nil && !os.IsExist(err) {
			return err
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return err
		}
	}
	for _, s := range cfg.Shares {
		if err := mount9p(s.Tag, "/newroot"+s.Path, false, "cache=none"); err != nil {
			return err
		}
	}
	if err := bindModules(cfg.Release, cfg.Modules); err != nil {
		return err
	}
	if err := os.Chdir("/newroot"); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move new root to /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return os.Chdir("/")
}

// bindModules makes a fetched kernel's modules directory the guest's
// /lib/modules/RELEASE, where modprobe looks.
func bindModules(rel, dir string) error {
	if rel == "" || dir == "" || dir == "/lib/modules/"+rel || dir == "/usr/lib/modules/"+rel {
		return nil
	}
	dst := "/newroot/lib/modules/" + rel
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("modules of %s: %w", rel, err)
	}
	if err := mount("/newroot"+dir, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("modules of %s: %w", rel, err)
	}
	return nil
}

// setupNetwork brings up loopback; the VM has no other interface.
func setupNetwork() {
	unix.Sethostname([]byte("nbdlab-vm"))
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return
	}
	if unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr) == nil {
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
	}
}

func (g *guest) runCommand(cfg guestConfig) (int, error) {
	if len(cfg.Args) == 0 {
		return 0, errors.New("no command given")
	}
	// The command is looked up in the PATH it will run with.
	for _, kv := range cfg.Env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			os.Setenv("PATH", v)
		}
	}
	cmd := exec.Command(cfg.Args[0], cfg.Args[1:]...)
	cmd.Env = cfg.Env
	cmd.Dir = cfg.Dir
	if _, err := os.Stat(cfg.Dir); err != nil {
		cmd.Dir = "/"
	}
	cmd.Stdout = streamWriter{g.fw, frameStdout}
	cmd.Stderr = streamWriter{g.fw, frameStderr}
	if cfg.Merged {
		cmd.Stderr = cmd.Stdout // one pipe: os/exec shares it when the writers are equal
	}
	stdin, err := os.Open(os.DevNull)
	if err == nil {
		cmd.Stdin = stdin
	}
	// Background processes the command leaves behind may keep its output
	// open; its own exit is what counts.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(cmd.Stderr, "nbdlab vm: %v\n", err)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return 127, nil
		}
		return 126, nil
	}
	stop := make(chan struct{})
	defer close(stop)
	go reapOrphans(cmd.Process.Pid, stop)
	if err := cmd.Wait(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return 128 + int(ws.Signal()), nil
			}
			return ee.ExitCode(), nil
		}
		if errors.Is(err, exec.ErrWaitDelay) {
			return 0, nil
		}
		return 0, fmt.Errorf("wait for the command: %w", err)
	}
	return 0, nil
}

// reapOrphans is PID 1's duty: it collects the zombies of processes whose
// parents died, leaving the command itself to exec's Wait. It looks when
// a SIGCHLD says a child of PID 1 ended (an orphan's end, or a zombie's
// adoption, signals its new parent), not on a clock: reading every
// process's stat each 100 ms took, under TCG, more of the guest's two
// CPUs than the NBD server did during bench kernel (perf, cpu-clock).
func reapOrphans(keep int, stop <-chan struct{}) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGCHLD)
	defer signal.Stop(sig)
	for {
		reapZombies(keep)
		select {
		case <-stop:
			return
		case <-sig:
		}
	}
}

// reapZombies collects every zombie child of PID 1 but keep.
func reapZombies(keep int) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, st := range stats {
		b, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(st)))
		if len(f) > 1 && f[0] == "Z" && f[1] == "1" && pid != keep {
			var ws unix.WaitStatus
			unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		}
	}
}
