package kernelsuite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nbdlab/nbdlab/conform/report"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/kernel"
)

// ofKernel is why most cases run once per kernel.
const ofKernel = "a case of the kernel's own behaviour"

// notApplicable is returned by a case the server or kernel cannot do; it
// says why.
type notApplicable string

func (n notApplicable) Error() string { return string(n) }

// kernelCase is one case of the kernel suite.
type kernelCase struct {
	id, what string
	timeout  time.Duration // default 2m
	run      func(e *kenv) error
	// once, when set, says why the case does not depend on the server
	// under test: a case of the kernel's own behaviour (module races,
	// partition scans, device allocation, TCP under link faults, md
	// arrays), where the server only serves a few reads and writes, or
	// one that starts servers of its own. It runs once per kernel, with
	// the reference server, unless every server is asked for.
	once string
}

func (c kernelCase) limit() time.Duration {
	if c.timeout == 0 {
		return 2 * time.Minute
	}
	return c.timeout
}

// kenv is what a case works with; cleanup undoes what it left.
type kenv struct {
	ctx      context.Context
	srv      *runningServer
	guest    bool // in a lab VM: the kernel is the suite's to break
	attached []*kernel.Attachment
	undo     []func()
}

// attach connects a device to the server's export "d".
func (e *kenv) attach(o kernel.AttachOptions) (*kernel.Attachment, error) {
	o.Client.Export = "d"
	if o.Device == "" {
		o.Device = "any"
	}
	a, err := kernel.Attach(e.ctx, e.srv.addr().DialConn, o)
	if err != nil {
		return nil, err
	}
	e.attached = append(e.attached, a)
	return a, nil
}

// detach disconnects a and checks that the device is free the moment
// Disconnect returns.
func (e *kenv) detach(a *kernel.Attachment) error {
	if err := kernel.Disconnect(a.Index); err != nil {
		return err
	}
	if a.Interface == kernel.InterfaceIoctl {
		wctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		defer cancel()
		if err := a.Wait(wctx); err != nil && !errors.Is(err, syscall.EPIPE) {
			return fmt.Errorf("NBD_DO_IT did not return after disconnect: %w", err)
		}
	}
	d := kernel.DeviceInfo(a.Index)
	if d.Connected || d.Size != 0 {
		return fmt.Errorf("%s still connected (pid %d) or sized (%d bytes) when disconnect returned", a.Path, d.PID, d.Size)
	}
	return nil
}

func (e *kenv) cleanup() {
	for i := len(e.undo) - 1; i >= 0; i-- {
		e.undo[i]()
	}
	for _, a := range e.attached {
		if kernel.DeviceInfo(a.Index).Connected {
			kernel.Disconnect(a.Index)
		}
	}
}

// run runs a command, its output in the error.
func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// aligned returns n bytes aligned for O_DIRECT, filled with a pattern
// that differs per seed.
func aligned(n int, seed byte) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = byte(i/512) ^ seed ^ byte(i)
	}
	return b
}

// directIO reads (write false) or writes buf at off of path with
// O_DIRECT, bounded by ctx: an I/O the kernel never finishes is reported,
// not waited for.
func directIO(ctx context.Context, path string, write bool, buf []byte, off int64) error {
	done := make(chan error, 1)
	go func() {
		flag := os.O_RDONLY
		if write {
			flag = os.O_WRONLY
		}
		f, err := os.OpenFile(path, flag|syscall.O_DIRECT, 0)
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		if write {
			_, err = f.WriteAt(buf, off)
		} else {
			_, err = f.ReadAt(buf, off)
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("I/O on %s still pending after the case's deadline: a hang", path)
	}
}

// roundTrip writes a pattern through the device and reads it back.
func roundTrip(ctx context.Context, path string, seed byte) error {
	w := aligned(1<<20, seed)
	if err := directIO(ctx, path, true, w, 4<<20); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	r := aligned(1<<20, 0)
	if err := directIO(ctx, path, false, r, 4<<20); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if !bytes.Equal(w, r) {
		return fmt.Errorf("%s: read back differs from what was written", path)
	}
	return nil
}

func waitFor(ctx context.Context, d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// AttachCases selects the cases that attach and detach devices most
// (connect and disconnect over netlink and ioctl, umount racing
// NBD_CLEAR_SOCK, concurrent connects to any): the stress run's.
const AttachCases = `^(nbd001-size/(netlink|ioctl)|attach/ioctl-signals|nbd003-mount-clear-sock|devices/any-8-concurrent)$`

func kernelCases() []kernelCase {
	var cs []kernelCase
	for _, iface := range []kernel.Interface{kernel.InterfaceNetlink, kernel.InterfaceIoctl} {
		cs = append(cs,
			kernelCase{id: "nbd001-size/" + string(iface),
				what: "blktests nbd/001: the size is set the moment connect returns, I/O works at once, and disconnect leaves the device free and sized 0",
				run:  func(e *kenv) error { return caseSize(e, iface) }},
			kernelCase{id: "nbd002-partitions/" + string(iface),
				what: "blktests nbd/002 and nbd/005: partitions appear within 3 s of connect and vanish within 3 s of disconnect",
				run:  func(e *kenv) error { return casePartitions(e, iface) },
				once: ofKernel},
		)
	}
	cs = append(cs,
		kernelCase{id: "udev/probe-race", what: "8 rounds on one device, with udevd running: connect, I/O, disconnect, while blkid opens the device over and over as udev's probe does; every reconnect works and every write reads back", run: caseUdevProbeRace, timeout: 4 * time.Minute, once: ofKernel},
		kernelCase{id: "attach/ioctl-signals", what: "the task inside NBD_DO_IT is sent SIGURG (the Go runtime's preemption signal) 50 times: the device stays connected and sized, and I/O works", run: caseIoctlSignals, once: ofKernel},
		kernelCase{id: "nbd003-mount-clear-sock", what: "blktests nbd/003: umount racing NBD_CLEAR_SOCK on a mounted ext4, 5 rounds: no hang, no oops", run: caseClearSock, timeout: 4 * time.Minute, once: ofKernel},
		kernelCase{id: "data/verify-1conn-direct", what: "fio crc32c verify through /dev/nbdN, 1 connection, O_DIRECT", run: func(e *kenv) error { return caseFio(e, 1, true) }, timeout: 5 * time.Minute},
		kernelCase{id: "data/verify-4conn-direct", what: "fio crc32c verify through /dev/nbdN, 4 connections (where the server advertises multi-conn), O_DIRECT", run: func(e *kenv) error { return caseFio(e, 4, true) }, timeout: 5 * time.Minute},
		kernelCase{id: "data/verify-1conn-buffered", what: "fio crc32c verify through /dev/nbdN, 1 connection, buffered with fsync", run: func(e *kenv) error { return caseFio(e, 1, false) }, timeout: 5 * time.Minute},
		kernelCase{id: "readonly", what: "a device connected read-only refuses writes (EPERM) and says ro in sysfs; reads work", run: caseReadOnly},
		kernelCase{id: "devices/16-at-once", what: "16 devices connected at once to one server, each writing its own block, all read back through one", run: caseSixteen, once: ofKernel},
		kernelCase{id: "devices/any-8-concurrent", what: "8 concurrent connects to any free device get 8 distinct devices", run: caseAnyConcurrent, once: ofKernel},
		kernelCase{id: "timeout/server-stops", what: "a server that stops answering gives EIO after the request timeout (3 s), never a hang", run: caseServerStops},
		kernelCase{id: "faults/link-down-short", what: "the link down for 2 s under a 30 s timeout: I/O resumes and the data verifies", run: caseLinkShort, once: ofKernel},
		kernelCase{id: "faults/link-down-long", what: "the link down for longer than the 3 s timeout: EIO, no hang", run: caseLinkLong, once: ofKernel},
		kernelCase{id: "faults/netem-loss", what: "netem 5% loss and 5 ms delay on the link: fio verify passes", run: caseNetem, timeout: 5 * time.Minute, once: ofKernel},
	)
	cs = append(cs, requestCases()...)
	return append(cs, faultCases()...)
}

func caseSize(e *kenv, iface kernel.Interface) error {
	a, err := e.attach(kernel.AttachOptions{Interface: iface})
	if err != nil {
		return err
	}
	if d := kernel.DeviceInfo(a.Index); d.Size != kernelExportSize || !d.Connected {
		return fmt.Errorf("%s when connect returned: %d bytes, connected %v; want %d bytes", a.Path, d.Size, d.Connected, kernelExportSize)
	}
	f, err := os.Open(a.Path)
	if err != nil {
		return fmt.Errorf("open %s right after connect: %w", a.Path, err)
	}
	size, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	f.Close()
	if err != nil || size != kernelExportSize {
		return fmt.Errorf("BLKGETSIZE64 on %s right after connect: %d, %v; want %d", a.Path, size, err, kernelExportSize)
	}
	if err := roundTrip(e.ctx, a.Path, 1); err != nil {
		return err
	}
	return e.detach(a)
}

func casePartitions(e *kenv, iface kernel.Interface) error {
	a, err := e.attach(kernel.AttachOptions{Interface: iface})
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(e.ctx, "sfdisk", "--quiet", "--wipe", "always", a.Path)
	cmd.Stdin = strings.NewReader("label: dos\n,64M\n,64M\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sfdisk %s: %w: %s", a.Path, err, out)
	}
	if err := e.detach(a); err != nil {
		return err
	}
	if !waitFor(e.ctx, 3*time.Second, func() bool { return !exists(a.Path + "p1") }) {
		return fmt.Errorf("%sp1 still there 3 s after disconnect", a.Path)
	}
	a, err = e.attach(kernel.AttachOptions{Interface: iface, Device: a.Path})
	if err != nil {
		return fmt.Errorf("reconnect: %w", err)
	}
	if !waitFor(e.ctx, 3*time.Second, func() bool { return exists(a.Path+"p1") && exists(a.Path+"p2") }) {
		return fmt.Errorf("%sp1 and p2 did not appear within 3 s of connect", a.Path)
	}
	if err := e.detach(a); err != nil {
		return err
	}
	if !waitFor(e.ctx, 3*time.Second, func() bool { return !exists(a.Path+"p1") && !exists(a.Path+"p2") }) {
		return fmt.Errorf("%sp1 or p2 still there 3 s after disconnect", a.Path)
	}
	return nil
}

func caseClearSock(e *kenv) error {
	mnt, err := os.MkdirTemp("", "nbdlab-conform-mnt-")
	if err != nil {
		return err
	}
	defer os.Remove(mnt)
	for round := 1; round <= 5; round++ {
		a, err := e.attach(kernel.AttachOptions{Interface: kernel.InterfaceIoctl, Timeout: 10 * time.Second})
		if err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		if round == 1 {
			if _, err := run(e.ctx, "mkfs.ext4", "-q", "-F", a.Path); err != nil {
				d := kernel.DeviceInfo(a.Index)
				return fmt.Errorf("%w (sysfs now: pid %d, %d bytes)", err, d.PID, d.Size)
			}
		}
		if _, err := run(e.ctx, "mount", a.Path, mnt); err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			kernel.IoctlClearSock(a.Path)
		}()
		run(e.ctx, "umount", mnt)
		wg.Wait()
		for exists(mnt) && isMounted(mnt) {
			if _, err := run(e.ctx, "umount", "-l", mnt); err != nil {
				break
			}
		}
		kernel.Disconnect(a.Index)
		wctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
		err = a.Wait(wctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("round %d: NBD_DO_IT still running 30 s after CLEAR_SOCK and disconnect: a hang", round)
		}
	}
	return nil
}

// caseIoctlSignals signals the thread serving an ioctl-attached device.
// NBD_DO_IT sleeps interruptibly, and a signal there shuts the device's
// sockets down: a client whose thread can be signalled (a Go program's
// can, by its runtime's preemption) loses the device at random.
func caseIoctlSignals(e *kenv) error {
	a, err := e.attach(kernel.AttachOptions{Interface: kernel.InterfaceIoctl})
	if err != nil {
		return err
	}
	// sysfs's pid is the thread that called NBD_DO_IT.
	tid := kernel.DeviceInfo(a.Index).PID
	for i := 0; i < 50; i++ {
		if err := unix.Tgkill(os.Getpid(), tid, unix.SIGURG); err != nil {
			return fmt.Errorf("tgkill %d SIGURG: %w", tid, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if d := kernel.DeviceInfo(a.Index); !d.Connected || d.Size != kernelExportSize {
		return fmt.Errorf("%s after 50 signals to the thread in NBD_DO_IT (tid %d): connected %v, %d bytes; want %d", a.Path, tid, d.Connected, d.Size, kernelExportSize)
	}
	if err := roundTrip(e.ctx, a.Path, 3); err != nil {
		return fmt.Errorf("after 50 signals to the thread in NBD_DO_IT: %w", err)
	}
	return e.detach(a)
}

func isMounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mounts")
	return strings.Contains(string(b), " "+dir+" ")
}

func caseFio(e *kenv, conns int, direct bool) error {
	if conns > 1 && e.srv.Flags&nbd.FlagCanMultiConn == 0 {
		return notApplicable("the server does not advertise NBD_FLAG_CAN_MULTI_CONN")
	}
	a, err := e.attach(kernel.AttachOptions{Connections: conns})
	if err != nil {
		return err
	}
	if err := fioVerify(e.ctx, a.Path, conns, direct, "16M"); err != nil {
		return err
	}
	return e.detach(a)
}

// fioVerify writes size of random blocks with crc32c headers through dev
// and reads them back.
func fioVerify(ctx context.Context, dev string, jobs int, direct bool, size string) error {
	args := []string{"--name=verify", "--filename=" + dev, "--rw=randwrite", "--bsrange=4k-256k", "--size=" + size,
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0", "--output-format=terse"}
	if direct {
		args = append(args, "--direct=1", "--ioengine=libaio", "--iodepth=16")
	} else {
		args = append(args, "--direct=0", "--ioengine=psync", "--fsync_on_close=1", "--invalidate=1")
	}
	if jobs > 1 {
		// One job per connection's worth of queue, each its own region.
		args = append(args, fmt.Sprintf("--numjobs=%d", jobs), "--offset_increment="+size)
	}
	_, err := run(ctx, "fio", args...)
	return err
}

func caseReadOnly(e *kenv) error {
	a, err := e.attach(kernel.AttachOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	ro, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(a.Path), "ro"))
	if strings.TrimSpace(string(ro)) != "1" {
		return fmt.Errorf("/sys/block/%s/ro is %q, want 1", filepath.Base(a.Path), strings.TrimSpace(string(ro)))
	}
	f, err := os.OpenFile(a.Path, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.Write(make([]byte, 4096))
		f.Close()
	}
	if !errors.Is(err, syscall.EROFS) && !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("writing to read-only %s: %v, want EROFS, EPERM or EACCES", a.Path, err)
	}
	if err := directIO(e.ctx, a.Path, false, aligned(1<<16, 0), 0); err != nil {
		return fmt.Errorf("read from read-only %s: %w", a.Path, err)
	}
	return e.detach(a)
}

func nbdsMax() int {
	b, _ := os.ReadFile("/sys/module/nbd/parameters/nbds_max")
	var n int
	fmt.Sscan(string(b), &n)
	return n
}

func caseSixteen(e *kenv) error {
	if n := nbdsMax(); n < 16 {
		return notApplicable(fmt.Sprintf("nbd was loaded with nbds_max=%d; 16 devices need nbds_max=16", n))
	}
	var as []*kernel.Attachment
	for i := 0; i < 16; i++ {
		a, err := e.attach(kernel.AttachOptions{})
		if err != nil {
			return fmt.Errorf("device %d of 16: %w", i+1, err)
		}
		as = append(as, a)
	}
	for i, a := range as {
		if err := directIO(e.ctx, a.Path, true, aligned(4096, byte(i+1)), int64(i)*4096); err != nil {
			return fmt.Errorf("write through %s: %w", a.Path, err)
		}
	}
	for i := range as {
		got := aligned(4096, 0)
		if err := directIO(e.ctx, as[0].Path, false, got, int64(i)*4096); err != nil {
			return err
		}
		if !bytes.Equal(got, aligned(4096, byte(i+1))) {
			return fmt.Errorf("block %d written through %s reads back different through %s", i, as[i].Path, as[0].Path)
		}
	}
	for _, a := range as {
		if err := e.detach(a); err != nil {
			return err
		}
	}
	return nil
}

func caseAnyConcurrent(e *kenv) error {
	if n := nbdsMax(); n < 8 {
		return notApplicable(fmt.Sprintf("nbd was loaded with nbds_max=%d", n))
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	got := map[int]bool{}
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := kernel.Attach(e.ctx, e.srv.addr().DialConn, kernel.AttachOptions{Device: "any", Client: nbd.ClientConfig{Export: "d"}})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			e.attached = append(e.attached, a)
			if got[a.Index] {
				errs = append(errs, fmt.Errorf("two connects got %s", a.Path))
			}
			got[a.Index] = true
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("%d of 8 concurrent connects failed: %w", len(errs), errors.Join(errs...))
	}
	for _, a := range e.attached {
		if err := e.detach(a); err != nil {
			return err
		}
	}
	return nil
}

// expectEIO issues a read and wants EIO within within; anything else, or
// no answer, fails.
func expectEIO(ctx context.Context, path string, within time.Duration) error {
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	err := directIO(rctx, path, false, aligned(4096, 0), 8<<20)
	took := time.Since(start).Round(100 * time.Millisecond)
	switch {
	case err == nil:
		return fmt.Errorf("read from %s succeeded; want EIO", path)
	case !errors.Is(err, syscall.EIO):
		return fmt.Errorf("read from %s after %s: %v; want EIO", path, took, err)
	}
	return nil
}

func caseServerStops(e *kenv) error {
	a, err := e.attach(kernel.AttachOptions{Timeout: 3 * time.Second})
	if err != nil {
		return err
	}
	if err := e.srv.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	e.undo = append(e.undo, func() { e.srv.signal(syscall.SIGCONT) })
	// A stop reaches every thread only as each next runs; under TCG that
	// takes a while, and a thread not yet stopped could still answer.
	if !waitFor(e.ctx, 10*time.Second, e.srv.stopped) {
		return fmt.Errorf("the server (pid %d) was not stopped 10 s after SIGSTOP", e.srv.proc.Cmd.Process.Pid)
	}
	return expectEIO(e.ctx, a.Path, 60*time.Second)
}

func caseLinkShort(e *kenv) error {
	a, err := e.attach(kernel.AttachOptions{Timeout: 30 * time.Second})
	if err != nil {
		return err
	}
	w := aligned(1<<20, 7)
	if err := directIO(e.ctx, a.Path, true, w, 0); err != nil {
		return err
	}
	if err := e.srv.net.SetLink(false); err != nil {
		return err
	}
	e.undo = append(e.undo, func() { e.srv.net.SetLink(true) })
	done := make(chan error, 1)
	r := aligned(1<<20, 0)
	go func() { done <- directIO(e.ctx, a.Path, false, r, 0) }()
	time.Sleep(2 * time.Second)
	if err := e.srv.net.SetLink(true); err != nil {
		return err
	}
	if err := <-done; err != nil {
		return fmt.Errorf("read across 2 s of link down: %w", err)
	}
	if !bytes.Equal(w, r) {
		return errors.New("data read across the outage differs")
	}
	return e.detach(a)
}

func caseLinkLong(e *kenv) error {
	a, err := e.attach(kernel.AttachOptions{Timeout: 3 * time.Second})
	if err != nil {
		return err
	}
	if err := e.srv.net.SetLink(false); err != nil {
		return err
	}
	e.undo = append(e.undo, func() { e.srv.net.SetLink(true) })
	return expectEIO(e.ctx, a.Path, 60*time.Second)
}

func caseNetem(e *kenv) error {
	exec.CommandContext(e.ctx, "modprobe", "sch_netem").Run()
	link, err := netlink.LinkByName(e.srv.net.ClientLink)
	if err != nil {
		return err
	}
	q := netlink.NewNetem(netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		netlink.NetemQdiscAttrs{Loss: 5, Latency: 5000})
	if err := netlink.QdiscAdd(q); err != nil {
		return notApplicable(fmt.Sprintf("netem is not available in this kernel: %v", err))
	}
	e.undo = append(e.undo, func() { netlink.QdiscDel(q) })
	a, err := e.attach(kernel.AttachOptions{Timeout: 60 * time.Second})
	if err != nil {
		return err
	}
	if err := fioVerify(e.ctx, a.Path, 1, true, "8M"); err != nil {
		return err
	}
	return e.detach(a)
}

// Cases describes the cases of the kernel suite, in order.
func Cases() []report.CheckInfo {
	var out []report.CheckInfo
	for _, c := range kernelCases() {
		what := c.what
		if c.once != "" {
			what += " [" + c.once + ": once per kernel]"
		}
		out = append(out, report.CheckInfo{ID: c.id, Level: report.Must, What: what})
	}
	return out
}

// caseUdevProbeRace attaches, uses and detaches one device eight times
// while blkid opens it in a loop throughout, detach and reconnect
// included, as udev's probe does whenever a device changes: users of
// nbd-client and qemu-nbd report the races this makes (a reconnect
// refused with EBUSY while the device is still open, partitions left
// behind). It needs udevd running; with --no-udev it is n/a.
func caseUdevProbeRace(e *kenv) error {
	if !exists("/run/udev/control") {
		return notApplicable("no systemd-udevd here (the VM was booted --no-udev)")
	}
	a, err := e.attach(kernel.AttachOptions{Interface: kernel.InterfaceNetlink})
	if err != nil {
		return err
	}
	dev := a.Path
	stop := make(chan struct{})
	probed := make(chan int, 1)
	go func() {
		n := 0
		defer func() { probed <- n }()
		for ; n < 5000; n++ { // bounded; stopped after the last round
			select {
			case <-stop:
				return
			default:
			}
			exec.CommandContext(e.ctx, "blkid", "-p", dev).Run()
		}
	}()
	defer func() {
		close(stop)
		<-probed
	}()
	if _, err := run(e.ctx, "dd", "if=/dev/urandom", "of=/tmp/udev-race", "bs=64k", "count=1", "status=none"); err != nil {
		return err
	}
	for round := 1; round <= 8; round++ {
		if round > 1 {
			if a, err = e.attach(kernel.AttachOptions{Interface: kernel.InterfaceNetlink, Device: dev}); err != nil {
				return fmt.Errorf("round %d: reconnect %s while blkid probes it: %w", round, dev, err)
			}
		}
		off := strconv.Itoa(round * 16)
		if _, err := run(e.ctx, "dd", "if=/tmp/udev-race", "of="+dev, "bs=64k", "seek="+off, "oflag=direct", "status=none"); err != nil {
			return fmt.Errorf("round %d: write: %w", round, err)
		}
		if _, err := run(e.ctx, "dd", "if="+dev, "of=/tmp/udev-race.back", "bs=64k", "skip="+off, "count=1", "iflag=direct", "status=none"); err != nil {
			return fmt.Errorf("round %d: read: %w", round, err)
		}
		if _, err := run(e.ctx, "cmp", "/tmp/udev-race", "/tmp/udev-race.back"); err != nil {
			return fmt.Errorf("round %d: what was written does not read back: %w", round, err)
		}
		if err := e.detach(a); err != nil {
			return fmt.Errorf("round %d: detach while blkid probes: %w", round, err)
		}
	}
	return nil
}
