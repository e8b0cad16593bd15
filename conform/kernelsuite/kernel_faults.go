package kernelsuite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nbdlab/nbdlab/internal/tlscreds"
	"github.com/nbdlab/nbdlab/labnet"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/kernel"
	"github.com/nbdlab/nbdlab/servers"
)

// Cases that break things: servers killed and restarted, namespaces
// deleted, errors injected, arrays degraded, modules unloaded.

func faultCases() []kernelCase {
	return []kernelCase{
		{id: "faults/dead-timeout", what: "the server killed: I/O fails with EIO after the 5 s dead-connection timeout, no hang", run: caseDeadTimeout},
		{id: "faults/persist-restart", what: "the server killed and restarted under O_DSYNC writes of a persistent device (--persist): every acknowledged write is there", run: casePersist, timeout: 4 * time.Minute},
		{id: "faults/netns-deleted", what: "the server's namespace deleted under a device: EIO after the 3 s timeout, no hang", run: caseNetnsDeleted, once: ofKernel},
		{id: "errors/eio-range", what: "a server answering EIO for one range: reads there fail with EIO, the rest works, ext4 on it reports the error", run: caseEIORange, timeout: 3 * time.Minute, once: "a case of nbdlab serve's error injection, on an export of its own"},
		{id: "tls/relayed", what: "a TLS export, relayed for the kernel by nbdlab's client: data verifies", run: caseTLS, once: "a case of the TLS relay, to an nbdlab serve of its own"},
		{id: "raid1/degrade-and-resync", what: "md RAID1 over two devices from two servers in two namespaces: one killed, the array degrades and keeps serving; restarted, re-added, resynced, the data verifies", run: caseRAID1, timeout: 6 * time.Minute, once: ofKernel},
		{id: "nbd004-modprobe-race", what: "blktests nbd/004: rmmod and modprobe nbd racing netlink connect and disconnect, 10 rounds: no oops, nbd usable after (in lab VMs only)", run: caseModprobeRace, timeout: 3 * time.Minute, once: ofKernel},
	}
}

// fileBacked reports whether the server keeps its data in the image file,
// where it outlives the process.
func (s *runningServer) fileBacked() bool {
	return !strings.Contains(s.spec.Name, "mem")
}

// restart kills the server and starts it again.
func (s *runningServer) restart() error {
	s.kill()
	return s.start()
}

func caseDeadTimeout(e *kenv) error {
	a, err := e.attach(kernel.AttachOptions{Timeout: 30 * time.Second, DeadTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	if a.Interface != kernel.InterfaceNetlink {
		return notApplicable("the dead-connection timeout needs the netlink interface")
	}
	e.srv.kill()
	return expectEIO(e.ctx, a.Path, 60*time.Second)
}

func casePersist(e *kenv) error {
	if !e.srv.fileBacked() {
		return notApplicable("a memory export loses its data with its process")
	}
	// A request in flight when the server dies waits out the request
	// timeout (60 s) before the kernel requeues it on the new connection.
	// A shorter one made nbd-server's restart miss its first handshake
	// under TCG.
	a, err := e.attach(kernel.AttachOptions{Timeout: 60 * time.Second, DeadTimeout: 120 * time.Second})
	if err != nil {
		return err
	}
	if a.Interface != kernel.InterfaceNetlink {
		return notApplicable("reconnecting needs the netlink interface")
	}
	pctx, stop := context.WithCancel(e.ctx)
	defer stop()
	go a.Persist(pctx)
	f, err := os.OpenFile(a.Path, os.O_RDWR|syscall.O_DIRECT|syscall.O_DSYNC, 0)
	if err != nil {
		return err
	}
	err = durableAcrossRestart(e.ctx, f, "O_DSYNC", e.srv.restart)
	f.Close() // an open device stays connected past its disconnect
	if err != nil {
		return err
	}
	stop()
	return e.detach(a)
}

func caseNetnsDeleted(e *kenv) error {
	a, err := e.attach(kernel.AttachOptions{Timeout: 3 * time.Second})
	if err != nil {
		return err
	}
	old := e.srv.net
	e.srv.kill()
	if err := old.Close(); err != nil {
		return fmt.Errorf("delete namespace %s: %w", old.Name, err)
	}
	e.undo = append(e.undo, func() {
		if n, err := labnet.NewPair(old.Name, 0); err == nil {
			e.srv.net = n
		}
	})
	return expectEIO(e.ctx, a.Path, 60*time.Second)
}

// extraNbdlab starts another nbdlab serve in the server's namespace, on
// port, for cases that need an export of their own; it is stopped when the
// case ends.
func (e *kenv) extraNbdlab(port int, args ...string) (nbd.Addr, error) {
	addr := nbd.Addr{Network: "tcp", Address: net.JoinHostPort(e.srv.net.ServerIP.String(), strconv.Itoa(port))}
	argv := append([]string{"netns", "exec", e.srv.net.Name, e.srv.nbdlab, "serve", "--listen", addr.Address}, args...)
	p, err := servers.StartListening(e.ctx, addr, 30*time.Second, "ip", argv...)
	if err != nil {
		return addr, err
	}
	e.undo = append(e.undo, func() { p.Stop(5 * time.Second) })
	return addr, nil
}

func (e *kenv) nbdlabOnly(what string) error {
	if !strings.HasPrefix(e.srv.spec.Name, "nbdlab") {
		return notApplicable(what + " is tested with nbdlab serve's own exports")
	}
	return nil
}

func caseEIORange(e *kenv) error {
	if err := e.nbdlabOnly("error injection (eio=)"); err != nil {
		return err
	}
	addr, err := e.extraNbdlab(kernelPort+1, "d=mem:256M,eio=160M+1M")
	if err != nil {
		return err
	}
	a, err := kernel.Attach(e.ctx, addr.DialConn, kernel.AttachOptions{Device: "any", Timeout: 30 * time.Second, Client: nbd.ClientConfig{Export: "d"}})
	if err != nil {
		return err
	}
	e.attached = append(e.attached, a)
	if err := directIO(e.ctx, a.Path, false, aligned(4096, 0), 160<<20); !errors.Is(err, syscall.EIO) {
		return fmt.Errorf("read in the bad range: %v, want EIO", err)
	}
	if err := roundTrip(e.ctx, a.Path, 5); err != nil {
		return fmt.Errorf("outside the bad range: %w", err)
	}
	mnt, err := os.MkdirTemp("", "nbdlab-conform-mnt-")
	if err != nil {
		return err
	}
	defer os.Remove(mnt)
	if _, err := run(e.ctx, "mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0", a.Path); err != nil {
		return err
	}
	if _, err := run(e.ctx, "mount", "-o", "errors=remount-ro", a.Path, mnt); err != nil {
		return err
	}
	defer run(context.Background(), "umount", "-l", mnt)
	// Fill the filesystem past the bad range: a write there must fail,
	// and say so, rather than vanish.
	out, err := run(e.ctx, "dd", "if=/dev/zero", "of="+filepath.Join(mnt, "fill"), "bs=1M", "count=230", "conv=fsync")
	if err == nil {
		return fmt.Errorf("230 MiB written across a range that fails every write, and fsync said nothing: %s", strings.TrimSpace(out))
	}
	if !strings.Contains(out, "Input/output error") && !strings.Contains(out, "Read-only file system") {
		return fmt.Errorf("dd across the bad range failed without an I/O error: %v", err)
	}
	return nil
}

func caseTLS(e *kenv) error {
	if err := e.nbdlabOnly("TLS"); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "nbdlab-conform-tls-")
	if err != nil {
		return err
	}
	e.undo = append(e.undo, func() { os.RemoveAll(dir) })
	creds, err := tlscreds.Write(dir)
	if err != nil {
		return err
	}
	addr, err := e.extraNbdlab(kernelPort+2, "--tls-cert", creds.ServerCert, "--tls-key", creds.ServerKey, "--tls-ca", creds.CACert, "d=mem:64M")
	if err != nil {
		return err
	}
	cfg, err := creds.Client()
	if err != nil {
		return err
	}
	a, err := kernel.Attach(e.ctx, addr.DialConn, kernel.AttachOptions{Device: "any", Connections: 2, Client: nbd.ClientConfig{Export: "d", TLSConfig: cfg}})
	if err != nil {
		return err
	}
	e.attached = append(e.attached, a)
	if !a.NeedsProcess {
		return errors.New("a TLS device not relayed through this process")
	}
	if err := fioVerify(e.ctx, a.Path, 2, true, "8M"); err != nil { // TLS under TCG is slow
		return err
	}
	return e.detach(a)
}

// mdstat returns /proc/mdstat.
func mdstat() string {
	b, _ := os.ReadFile("/proc/mdstat")
	return string(b)
}

func caseRAID1(e *kenv) error {
	if _, err := exec.LookPath("mdadm"); err != nil {
		return notApplicable("mdadm is not installed")
	}
	// A second server of the same kind, in a namespace of its own.
	n2, err := labnet.NewPair("nbdlab-conform-b", 1)
	if err != nil {
		return err
	}
	dir2 := e.srv.dir + "-b"
	os.MkdirAll(dir2, 0o755)
	img2 := filepath.Join(dir2, "disk.img")
	if err := os.WriteFile(img2, nil, 0o644); err != nil {
		return err
	}
	os.Truncate(img2, kernelExportSize)
	b := &runningServer{spec: e.srv.spec, net: n2, dir: dir2, img: img2, nbdlab: e.srv.nbdlab, ctx: e.ctx}
	e.undo = append(e.undo, func() { b.close(); os.RemoveAll(dir2) })
	if err := b.start(); err != nil {
		return err
	}
	opts := kernel.AttachOptions{Timeout: 5 * time.Second, DeadTimeout: 5 * time.Second}
	da, err := e.attach(opts)
	if err != nil {
		return err
	}
	attachB := func() (*kernel.Attachment, error) {
		o := opts
		o.Client.Export, o.Device = "d", "any"
		a, err := kernel.Attach(e.ctx, b.addr().DialConn, o)
		if err == nil {
			e.attached = append(e.attached, a)
		}
		return a, err
	}
	db, err := attachB()
	if err != nil {
		return err
	}
	const md = "/dev/md/nbdlab-conform"
	if _, err := run(e.ctx, "mdadm", "--create", md, "--run", "--level=1", "--raid-devices=2", "--metadata=1.2", "--assume-clean", "--homehost=any", da.Path, db.Path); err != nil {
		return err
	}
	e.undo = append(e.undo, func() { run(context.Background(), "mdadm", "--stop", md) })
	data := aligned(4<<20, 11)
	if err := directIO(e.ctx, md, true, data, 0); err != nil {
		return fmt.Errorf("write to the array: %w", err)
	}
	b.kill()
	more := aligned(1<<20, 12)
	if err := directIO(e.ctx, md, true, more, 8<<20); err != nil {
		return fmt.Errorf("write to the array with one server dead: %w", err)
	}
	if !waitFor(e.ctx, 60*time.Second, func() bool { return strings.Contains(mdstat(), "[U_]") || strings.Contains(mdstat(), "[_U]") }) {
		return fmt.Errorf("the array did not degrade within 60 s:\n%s", mdstat())
	}
	check := func(when string) error {
		got := aligned(4<<20, 0)
		if err := directIO(e.ctx, md, false, got, 0); err != nil || !bytes.Equal(got, data) {
			return fmt.Errorf("%s: data read from the array differs (%v)", when, err)
		}
		got = aligned(1<<20, 0)
		if err := directIO(e.ctx, md, false, got, 8<<20); err != nil || !bytes.Equal(got, more) {
			return fmt.Errorf("%s: data written while degraded differs (%v)", when, err)
		}
		return nil
	}
	if err := check("degraded"); err != nil {
		return err
	}
	run(e.ctx, "mdadm", md, "--fail", db.Path)
	run(e.ctx, "mdadm", md, "--remove", db.Path)
	kernel.Disconnect(db.Index)
	if err := b.start(); err != nil {
		return err
	}
	db, err = attachB()
	if err != nil {
		return fmt.Errorf("reattach the restarted server: %w", err)
	}
	if _, err := run(e.ctx, "mdadm", md, "--add", db.Path); err != nil {
		return err
	}
	if !waitFor(e.ctx, 3*time.Minute, func() bool {
		s := mdstat()
		return strings.Contains(s, "[UU]") && !strings.Contains(s, "recovery") && !strings.Contains(s, "resync")
	}) {
		return fmt.Errorf("the array did not resync within 3 minutes:\n%s", mdstat())
	}
	if err := check("resynced"); err != nil {
		return err
	}
	// The re-added half alone must have the data too.
	if _, err := run(e.ctx, "mdadm", md, "--fail", da.Path); err != nil {
		return err
	}
	return check("on the re-added half alone")
}

func caseModprobeRace(e *kenv) error {
	if !e.guest {
		return notApplicable("unloads nbd: run only in lab VMs (without --host)")
	}
	for round := 0; round < 10; round++ {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			a, err := kernel.Attach(e.ctx, e.srv.addr().DialConn, kernel.AttachOptions{Device: "any", Interface: kernel.InterfaceNetlink, Client: nbd.ClientConfig{Export: "d"}})
			if err == nil {
				kernel.Disconnect(a.Index)
			}
		}()
		go func() {
			defer wg.Done()
			exec.CommandContext(e.ctx, "rmmod", "nbd").Run()
		}()
		wg.Wait()
		if err := loadNBD(e.ctx); err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
	}
	// nbd must work after the races.
	a, err := e.attach(kernel.AttachOptions{})
	if err != nil {
		return fmt.Errorf("connect after the races: %w", err)
	}
	if err := roundTrip(e.ctx, a.Path, 6); err != nil {
		return err
	}
	return e.detach(a)
}
