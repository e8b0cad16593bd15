package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdlab/nbdlab/internal/command"
	"github.com/nbdlab/nbdlab/internal/procfs"
	"github.com/nbdlab/nbdlab/labnet"
	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/kernel"
	"github.com/nbdlab/nbdlab/servers"
)

// NFSOptions configure RunNFS.
type NFSOptions struct {
	// Setups are TOPOLOGY/LINK pairs: netns or vms, and a labnet profile.
	// Default netns/none, netns/wan, vms/none.
	Setups  []string
	Targets []string // default nbd, nfs4.2-sync, nfs3-sync
	Kernel  string   // for the VMs; default the newest installed
	// Server is the NBD server under ext4, one of servers.TCP;
	// default nbdlab-file.
	Server      string
	Connections int // NBD connections; default 1, as NFS uses one
	// Sizes in a namespace on an unshaped or lan link; on a link of 5 ms
	// RTT or more, and between two VMs, the file counts are a fifth and
	// the file half, so that a run stays within its time (every NFS
	// metadata operation waits a round trip).
	Files   int           // files in the untarred tree; default 400
	Small   int           // files created and fsynced; default 50
	FioSize int64         // bytes of the sequential file; default 16 MiB
	FioTime time.Duration // each random I/O job; default 1s
	// Rounds, each visiting every target in turn; default 5, the fewest
	// that give the median a 95% interval and so a verdict.
	Rounds int
	// HostClock times the netns VM by the host's clock under TCG, not by
	// the instructions it executes (vm.Config.InstructionClock). The
	// two VMs of a vms setup always keep the host's clock: each would
	// count its own instructions, and their clocks would drift apart.
	HostClock bool
	Quick     bool // a small subset, for smoke tests
	Host      bool // run here: netns setups only, needs nbd and nfsd
	Agent     string
	NIC       string // with Host in a VM of the vms topology: this VM's address
	Source    string // the tree's files come from here; default GOROOT/src
	// Backing, with Host, is a directory on disk for the exports (the
	// image file and the NFS export) instead of a tmpfs.
	Backing string
	Nbdlab  string
	Dir     string // where results.json, report.md and plots go
	JSON    string // with Host: write the figures here instead
	Out     io.Writer
}

// NFSTargets are the targets the comparison knows.
func NFSTargets() []string {
	return []string{nbdTarget, "nfs4.2-sync", "nfs4.2-async", "nfs3-sync", "nfs3-async"}
}

func (o *NFSOptions) defaults() error {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Quick {
		if len(o.Setups) == 0 {
			o.Setups = []string{"netns/none", "vms/none"}
		}
		if len(o.Targets) == 0 {
			o.Targets = []string{nbdTarget, "nfs4.2-sync"}
		}
		o.Files = orInt(o.Files, 200)
		o.Small = orInt(o.Small, 30)
		if o.FioSize == 0 {
			o.FioSize = 16 << 20
		}
		if o.FioTime == 0 {
			o.FioTime = time.Second
		}
		o.Rounds = orInt(o.Rounds, 1)
	}
	if len(o.Setups) == 0 {
		o.Setups = []string{"netns/none", "netns/wan", "vms/none"}
	}
	if len(o.Targets) == 0 {
		o.Targets = []string{nbdTarget, "nfs4.2-sync", "nfs3-sync"}
	}
	o.Files = orInt(o.Files, 400)
	o.Small = orInt(o.Small, 50)
	o.Connections = orInt(o.Connections, 1)
	o.Rounds = orInt(o.Rounds, 5)
	if o.FioSize == 0 {
		o.FioSize = 16 << 20
	}
	if o.FioTime == 0 {
		o.FioTime = time.Second
	}
	if o.Server == "" {
		o.Server = "nbdlab-file"
	}
	for _, s := range o.Setups {
		if _, err := parseSetup(s); err != nil {
			return err
		}
	}
	for _, tg := range o.Targets {
		if !slices.Contains(NFSTargets(), tg) {
			return fmt.Errorf("bench: unknown target %q; known: %s", tg, strings.Join(NFSTargets(), ", "))
		}
	}
	if o.Backing != "" && !o.Host {
		return errors.New("bench: --backing needs --host: in a lab VM every filesystem is memory or 9p, and nfsd cannot export 9p")
	}
	if _, err := servers.Find(o.Server); err != nil {
		return fmt.Errorf("bench: --server: %w", err)
	}
	if o.Nbdlab == "" {
		exe, err := selfExe()
		if err != nil {
			return err
		}
		o.Nbdlab = exe
	}
	return nil
}

func orInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// selfExe is this executable; in a lab VM, the kernel's link to it.
func selfExe() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(exe); err != nil {
		return fmt.Sprintf("/proc/%d/exe", os.Getpid()), nil
	}
	return exe, nil
}

func parseSetup(s string) (setup, error) {
	topo, link, ok := strings.Cut(s, "/")
	if !ok || (topo != "netns" && topo != "vms") {
		return setup{}, fmt.Errorf("bench: setup %q: want TOPOLOGY/LINK with TOPOLOGY netns or vms, e.g. netns/wan", s)
	}
	if _, err := labnet.FindProfile(link); err != nil {
		return setup{}, fmt.Errorf("bench: setup %q: %w", s, err)
	}
	return setup{topo, link}, nil
}

// hostRun is the client side of the comparison on this kernel.
type hostRun struct {
	o      NFSOptions
	agent  *agentClient
	ip     string // the server side's address
	link   string // the client's end of the link, to shape
	res    *Results
	kernel string
	mnt    string
	own    bool // the server side has a kernel of its own
	trees  map[int]string
	dev    string // the NBD device while the nbd target is mounted
	// mountArgs mount the target again on mnt.
	mountArgs []string
}

// runNFSHost runs the comparison's setups on this kernel: netns setups
// with the server side in a namespace; a vms setup when Agent names the
// server VM.
func runNFSHost(ctx context.Context, o NFSOptions) (*Results, error) {
	if err := checkTools("fio", "tar", "mkfs.ext4", "mount.nfs", "exportfs", "rpc.nfsd", "rpc.mountd", "rpcbind"); err != nil {
		return nil, err
	}
	if err := command.Exec(ctx, "", nil, nil, "modprobe", "nbd"); err != nil {
		return nil, fmt.Errorf("bench: this kernel has no nbd (build it with nbdlab kmod build, or run without --host): %w", err)
	}
	res := &Results{Kind: "nfs", Started: time.Now()}
	rel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	h := &hostRun{o: o, res: res, kernel: strings.TrimSpace(string(rel)), mnt: "/run/nbdlab-bench-mnt"}
	if err := os.MkdirAll(h.mnt, 0o755); err != nil {
		return nil, err
	}
	var netnsLinks, vmsLinks []string
	for _, s := range o.Setups {
		st, _ := parseSetup(s)
		if st.Topology == "netns" {
			netnsLinks = append(netnsLinks, st.Link)
		} else {
			vmsLinks = append(vmsLinks, st.Link)
		}
	}
	if len(vmsLinks) > 0 {
		if o.Agent == "" || o.NIC == "" {
			return nil, errors.New("bench: a vms setup runs in the client VM that nbdlab bench nfs boots (without --host)")
		}
		link, err := labnet.UpNIC(ctx, net.ParseIP(o.NIC))
		if err != nil {
			return nil, err
		}
		h.ip, h.link, h.own = o.Agent, link, true
		if err := h.withAgent(ctx, "vms", vmsLinks); err != nil {
			return res, err
		}
	}
	if len(netnsLinks) > 0 {
		pair, err := labnet.NewPair("nbdlab-bench", 0)
		if err != nil {
			return nil, err
		}
		defer pair.Close()
		argv := []string{"netns", "exec", pair.Name, o.Nbdlab, "bench", "agent", "--ip", pair.ServerIP.String(),
			"--link", pair.ServerLink, "--backing", "/run/nbdlab-bench-backing"}
		if o.Backing != "" {
			argv = append(argv[:len(argv)-1], o.Backing, "--on-disk")
		}
		agent := exec.CommandContext(ctx, "ip", argv...)
		agent.Stdout, agent.Stderr = o.Out, o.Out
		if err := agent.Start(); err != nil {
			return nil, fmt.Errorf("bench: start the agent: %w", err)
		}
		defer func() {
			agent.Process.Kill()
			agent.Wait()
		}()
		h.ip, h.link, h.own = pair.ServerIP.String(), pair.ClientLink, false
		if err := h.withAgent(ctx, "netns", netnsLinks); err != nil {
			return res, err
		}
	}
	return res, nil
}

func checkTools(names ...string) error {
	if err := command.Require(names...); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// withAgent runs every link of one topology against the agent at h.ip.
func (h *hostRun) withAgent(ctx context.Context, topo string, links []string) error {
	ac, err := dialAgent(ctx, h.ip)
	if err != nil {
		return err
	}
	defer ac.close()
	h.agent = ac
	for _, name := range links {
		p, _ := labnet.FindProfile(name)
		if err := labnet.Shape(ctx, nil, h.link, p); err != nil {
			return err
		}
		if _, err := ac.call(agentRequest{Op: "shape", Profile: name}); err != nil {
			return err
		}
		for round := 1; round <= h.o.Rounds; round++ {
			for _, tg := range h.o.Targets {
				if err := h.target(ctx, setup{topo, name}, p, tg, round); err != nil {
					return err
				}
			}
		}
	}
	labnet.Shape(ctx, nil, h.link, labnet.Profile{Name: "none"})
	return nil
}

// target mounts one target, runs every workload on it and unmounts it.
func (h *hostRun) target(ctx context.Context, s setup, p labnet.Profile, tg string, round int) error {
	base := Figure{Topology: s.Topology, Link: s.Link, LinkDesc: p.String(), Kernel: h.kernel, CPUs: runtime.NumCPU(),
		Target: tg, Round: round, Durable: !strings.HasSuffix(tg, "-async")}
	var t visitTimes
	t0 := time.Now()
	unmount, err := h.mount(ctx, tg, &base)
	if err != nil {
		return fmt.Errorf("bench: %s %s: %w", s, tg, err)
	}
	t.mount = time.Since(t0)
	w := h.o.sized(s, p)
	w.ctx, w.dir = ctx, h.mnt
	if w.tarball, err = h.tree(w.files); err != nil {
		unmount()
		return err
	}
	base.Files, base.SmallFiles, base.FileBytes = w.files, w.small, w.fioSize
	for _, wl := range Workloads() {
		if wl.Cold {
			t1 := time.Now()
			if err := h.cool(ctx); err != nil {
				unmount()
				return err
			}
			t.cool += time.Since(t1)
			t.cools++
		}
		f := base
		f.Workload, f.Unit = wl.Name, wl.Unit
		c0, _ := procfs.SystemCPU()
		s0, _ := h.agent.cpu()
		d0, _ := readDiskStat(h.dev)
		start := time.Now()
		v, err := wl.run(w)
		took := time.Since(start)
		f.Wall, t.work = took.Seconds(), t.work+took
		c1, _ := procfs.SystemCPU()
		s1, _ := h.agent.cpu()
		f.Value, f.ServerCPU, f.ClientCPU = v, (s1 - s0).Seconds(), (c1 - c0).Seconds()
		if d1, err := readDiskStat(h.dev); err == nil && h.dev != "" {
			f.Requests = d1.sub(d0).String()
		}
		if !h.own {
			// One kernel: the machine's busy time less the server's.
			f.ClientCPU -= f.ServerCPU
		}
		line := fmt.Sprintf("%s %s %s: ", s, tg, wl.Name)
		if err != nil {
			f.Error = err.Error()
			line += "ERROR " + err.Error()
		} else {
			line += fmt.Sprintf("%.3g %s (CPU client %.2fs, server %.2fs)", v, wl.Unit, f.ClientCPU, f.ServerCPU)
			if f.Requests != "" {
				line += "; " + f.Requests
			}
		}
		fmt.Fprintln(h.o.Out, line)
		h.res.Figures = append(h.res.Figures, f)
	}
	t1 := time.Now()
	err = unmount()
	t.unmount = time.Since(t1)
	fmt.Fprintf(h.o.Out, "%s %s round %d: %s\n", s, tg, round, t.summary(time.Since(t0)))
	return err
}

// visitTimes are where one target's visit spent its time: a run's wall
// clock is mostly not the workloads' own.
type visitTimes struct {
	mount, cool, work, unmount time.Duration
	cools                      int
}

// summary is the visit's line, given its whole time.
func (t visitTimes) summary(total time.Duration) string {
	r := func(d time.Duration) string { return d.Round(100 * time.Millisecond).String() }
	return fmt.Sprintf("%s in all: mount %s, %d remounts %s, workloads %s (tools and probes included), unmount %s",
		r(total), r(t.mount), t.cools, r(t.cool), r(t.work), r(t.unmount))
}

// cool makes the target's caches cold: it is unmounted, which takes the
// filesystem's pages, inodes and dentries with it (NFS keeps none once
// its superblock is gone); for NBD the device's own cache, where ext4's
// metadata lives, is invalidated; and the target is mounted again. The
// server drops its caches only where they hold something (an export on
// disk: a tmpfs's pages cannot be dropped). Dropping every cache of the
// machine instead would also drop the tools' own files (fio and its 64
// libraries, read again from the VM's 9p root at some seconds a time
// under emulation) and time nothing that belongs to the target.
func (h *hostRun) cool(ctx context.Context) error {
	if err := command.Exec(ctx, "", nil, nil, "umount", h.mnt); err != nil {
		return err
	}
	if h.dev != "" {
		if err := flushBuffers("/dev/" + h.dev); err != nil {
			return err
		}
	}
	if _, err := h.agent.call(agentRequest{Op: "drop-caches"}); err != nil {
		return err
	}
	return command.Exec(ctx, "", nil, nil, "mount", h.mountArgs...)
}

// flushBuffers writes back and invalidates a block device's cache
// (BLKFLSBUF).
func flushBuffers(dev string) error {
	f, err := os.Open(dev)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0); err != nil {
		return fmt.Errorf("bench: BLKFLSBUF on %s: %w", dev, err)
	}
	return nil
}

// sized is the workloads' environment sized for setup s on link p: on a
// slow path (a link of 5 ms RTT or more, or two VMs, which share the
// host's CPUs and under emulation take tens of milliseconds a round trip)
// the file counts are a fifth and the file half.
func (o NFSOptions) sized(s setup, p labnet.Profile) *wenv {
	w := &wenv{files: o.Files, small: o.Small, fioSize: o.FioSize, fioTime: o.FioTime}
	if p.Delay >= 5*time.Millisecond || s.Topology == "vms" {
		w.files, w.small, w.fioSize = max(w.files/5, 1), max(w.small/5, 1), max(w.fioSize/2, 1<<20)
	}
	return w
}

// tree returns a tarball of the first n files of the source tree, made
// once per size.
func (h *hostRun) tree(n int) (string, error) {
	if p, ok := h.trees[n]; ok {
		return p, nil
	}
	p := filepath.Join(os.TempDir(), fmt.Sprintf("nbdlab-bench-tree-%d.tar", n))
	size, err := MakeTree(p, h.o.Source, n)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h.o.Out, "tree: the first %d files of %s, %.1f MiB\n", n, h.o.Source, float64(size)/(1<<20))
	if h.trees == nil {
		h.trees = map[int]string{}
	}
	h.trees[n] = p
	return p, nil
}

// mount offers target tg at h.mnt and returns how to take it away.
func (h *hostRun) mount(ctx context.Context, tg string, f *Figure) (func() error, error) {
	if tg == nbdTarget {
		return h.mountNBD(ctx, f)
	}
	vers, mode, _ := strings.Cut(strings.TrimPrefix(tg, "nfs"), "-")
	rep, err := h.agent.call(agentRequest{Op: "export-nfs", Sync: mode == "sync"})
	if err != nil {
		return nil, err
	}
	f.Server = "nfsd, 8 threads"
	f.Export = "rw," + mode + ",no_subtree_check,no_root_squash"
	src, fstype, opts := h.ip+":/", "nfs4", "vers="+vers
	if vers == "3" {
		src, fstype, opts = h.ip+":"+rep.Path, "nfs", "vers=3,nolock,proto=tcp,mountproto=tcp"
	}
	f.Mount = fstype + " " + opts
	h.mountArgs = []string{"-t", fstype, "-o", opts, src, h.mnt}
	if err := command.Exec(ctx, "", nil, nil, "mount", h.mountArgs...); err != nil {
		h.agent.call(agentRequest{Op: "unexport-nfs"})
		return nil, err
	}
	return func() error {
		err := command.Exec(ctx, "", nil, nil, "umount", h.mnt)
		if _, uerr := h.agent.call(agentRequest{Op: "unexport-nfs"}); err == nil {
			err = uerr
		}
		return err
	}, nil
}

// nbdExportSize is the export under the NFS comparison's ext4.
const nbdExportSize = 1 << 30

func (h *hostRun) mountNBD(ctx context.Context, f *Figure) (func() error, error) {
	if _, err := h.agent.call(agentRequest{Op: "serve-nbd", Server: h.o.Server, Size: nbdExportSize}); err != nil {
		return nil, err
	}
	spec, _ := servers.Find(h.o.Server)
	f.Server = spec.What
	addr := nbd.Addr{Network: "tcp", Address: net.JoinHostPort(h.ip, "10809")}
	a, err := kernel.Attach(ctx, addr.DialConn, kernel.AttachOptions{Device: "any", Connections: h.o.Connections,
		Timeout: 2 * time.Minute, Client: nbd.ClientConfig{Export: "d"}})
	if err != nil {
		h.agent.call(agentRequest{Op: "stop-nbd"})
		return nil, err
	}
	detach := func() error {
		err := kernel.Disconnect(a.Index)
		if _, serr := h.agent.call(agentRequest{Op: "stop-nbd"}); err == nil {
			err = serr
		}
		return err
	}
	f.Export = fmt.Sprintf("%s, %d connection(s), %d MiB", a.Path, a.Connections, nbdExportSize>>20)
	h.dev = filepath.Base(a.Path)
	f.Mount = "ext4 defaults"
	if err := command.Exec(ctx, "", nil, nil, "mkfs.ext4", "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", a.Path); err != nil {
		detach()
		return nil, err
	}
	h.mountArgs = []string{"-t", "ext4", a.Path, h.mnt}
	if err := command.Exec(ctx, "", nil, nil, "mount", h.mountArgs...); err != nil {
		detach()
		return nil, err
	}
	return func() error {
		h.dev = ""
		if err := command.Exec(ctx, "", nil, nil, "umount", h.mnt); err != nil {
			return err
		}
		return detach()
	}, nil
}
