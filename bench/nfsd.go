package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/nbdlab/nbdlab/internal/command"
	"github.com/nbdlab/nbdlab/servers"
	"github.com/vishvananda/netns"
)

// graceSeconds is the NFSv4 grace and lease time the comparison's nfsd
// runs with: the least nfsd takes, so that a fresh server opens soon.
const graceSeconds = 10

// nfsd is the kernel NFS server with the user-space daemons it needs:
// rpcbind (for NFSv3's MOUNT protocol) and rpc.mountd.
type nfsd struct {
	rpcbind, mountd *servers.Proc
}

// startNfsd loads nfsd, mounts its control filesystem in this mount and
// network namespace, starts the daemons and 8 nfsd threads, and waits out
// the grace period.
func startNfsd(ctx context.Context, out io.Writer) (*nfsd, error) {
	if err := command.Exec(ctx, "", nil, nil, "modprobe", "nfsd"); err != nil {
		return nil, fmt.Errorf("bench: this kernel has no nfsd: %w", err)
	}
	// The agent runs in a mount namespace of its own (ip netns exec
	// makes one; a VM is one): a tmpfs over /var/lib/nfs keeps this
	// nfsd's export table away from the machine's.
	if err := mountTmpfs("/var/lib/nfs"); err != nil {
		return nil, err
	}
	for _, f := range []string{"etab", "rmtab"} { // exportfs and mountd open them
		if err := os.WriteFile("/var/lib/nfs/"+f, nil, 0o644); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat("/proc/fs/nfsd/threads"); err != nil {
		if err := syscall.Mount("nfsd", "/proc/fs/nfsd", "nfsd", 0, ""); err != nil {
			return nil, fmt.Errorf("bench: mount nfsd on /proc/fs/nfsd: %w", err)
		}
	}
	for _, f := range []string{"nfsv4gracetime", "nfsv4leasetime"} {
		if err := os.WriteFile("/proc/fs/nfsd/"+f, []byte(fmt.Sprint(graceSeconds)), 0); err != nil {
			return nil, fmt.Errorf("bench: set nfsd's %s: %w", f, err)
		}
	}
	n := &nfsd{}
	var err error
	if n.rpcbind, err = servers.Start(ctx, "rpcbind", "-f", "-w"); err != nil {
		return nil, err
	}
	if n.mountd, err = servers.Start(ctx, "rpc.mountd", "-F"); err != nil {
		n.stop()
		return nil, err
	}
	// rpc.nfsd fails (ECONNREFUSED) if the kernel cannot reach rpcbind
	// to register: wait until rpcbind answers, and try again for a while,
	// since a busy machine may start the daemons slowly.
	if err := waitUnix(ctx, "/run/rpcbind.sock", 15*time.Second); err != nil {
		n.stop()
		return nil, fmt.Errorf("bench: rpcbind did not come up: %w", err)
	}
	for try := 1; ; try++ {
		err = command.Exec(ctx, "", nil, nil, "rpc.nfsd", "8")
		if err == nil {
			break
		}
		exec.Command("rpc.nfsd", "0").Run()
		if try == 10 || ctx.Err() != nil {
			n.stop()
			return nil, err
		}
		fmt.Fprintf(out, "agent: %v; trying again\n", err)
		time.Sleep(time.Second)
	}
	// Writing v4_end_grace ends the grace period in the initial network
	// namespace only; elsewhere it has to run out.
	if initialNetNS() && os.WriteFile("/proc/fs/nfsd/v4_end_grace", []byte("Y"), 0) == nil {
		return n, nil
	}
	fmt.Fprintf(out, "agent: waiting %ds for nfsd's grace period to end\n", graceSeconds+1)
	select {
	case <-ctx.Done():
		n.stop()
		return nil, ctx.Err()
	case <-time.After((graceSeconds + 1) * time.Second):
	}
	return n, nil
}

// waitUnix waits until a unix socket at path accepts connections.
func waitUnix(ctx context.Context, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// initialNetNS reports whether this thread is in PID 1's network namespace.
func initialNetNS() bool {
	cur, err := netns.Get()
	if err != nil {
		return false
	}
	defer cur.Close()
	init, err := netns.GetFromPid(1)
	if err != nil {
		return false
	}
	defer init.Close()
	return cur.Equal(init)
}

// export exports dir to everyone on the test networks; fsid=0 makes it
// NFSv4's root, so v4 mounts "/" and v3 mounts dir.
func (n *nfsd) export(ctx context.Context, dir string, sync bool) error {
	mode := "async"
	if sync {
		mode = "sync"
	}
	opts := "rw," + mode + ",no_subtree_check,no_root_squash,insecure,fsid=0"
	if err := command.Exec(ctx, "", nil, nil, "exportfs", "-i", "-o", opts, "*:"+dir); err != nil {
		return err
	}
	return command.Exec(ctx, "", nil, nil, "exportfs", "-f")
}

func (n *nfsd) unexport(ctx context.Context, dir string) error {
	if err := command.Exec(ctx, "", nil, nil, "exportfs", "-u", "*:"+dir); err != nil {
		return err
	}
	return command.Exec(ctx, "", nil, nil, "exportfs", "-f")
}

func (n *nfsd) stop() {
	exec.Command("rpc.nfsd", "0").Run()
	exec.Command("exportfs", "-ua").Run()
	for _, p := range []*servers.Proc{n.mountd, n.rpcbind} {
		if p != nil {
			p.Stop(5 * time.Second)
		}
	}
}

// mountTmpfs mounts a fresh tmpfs on dir.
func mountTmpfs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("bench: mount a tmpfs on %s: %w", dir, err)
	}
	return nil
}

// dropCaches writes back and drops this kernel's page, dentry and inode
// caches.
func dropCaches() error {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return fmt.Errorf("bench: drop caches: %w", err)
	}
	return nil
}
