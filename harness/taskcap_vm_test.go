//go:build vm

package harness_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/internal/procfs"
	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/nbd"
)

// procStatus returns a field of /proc/PID/status as a number.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	n, err := procfs.Status(pid, field)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// pidsCgroup makes a cgroup (v1 pids controller) that allows max tasks,
// removed when the test ends.
func pidsCgroup(t *testing.T, max int) string {
	t.Helper()
	root := "/sys/fs/cgroup/pids"
	if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
		testenv.Missing(t, "no pids cgroup controller at "+root)
	}
	if os.Geteuid() != 0 {
		testenv.Missing(t, "not root: a pids cgroup needs root")
	}
	dir := filepath.Join(root, fmt.Sprintf("nbdlab-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if os.Remove(dir) == nil {
				return
			}
		}
		t.Errorf("cgroup %s still has tasks", dir)
	})
	if err := os.WriteFile(filepath.Join(dir, "pids.max"), []byte(strconv.Itoa(max)), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Ten thousand idle clients against a server capped at a thousand tasks:
// it refuses those over its connection limit, serves the rest and new
// ones as others leave, never dies, and gives back what they cost.
func TestServeUnderTaskCap(t *testing.T) {
	const clients, taskCap = 10200, 1000
	cg := pidsCgroup(t, taskCap)
	s := serveBoth(t, "d=mem:64M")
	pid := s.Cmd.Process.Pid
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	threads0, rss0 := procStatus(t, pid, "Threads"), procStatus(t, pid, "VmRSS")
	addr := s.Addrs[1]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var (
		mu      sync.Mutex
		held    []*nbd.Client
		refused atomic.Int64
		wg      sync.WaitGroup
		sem     = make(chan struct{}, 256)
	)
	for range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			c, err := nbd.Dial(cctx, addr.String(), nil)
			if err != nil {
				refused.Add(1)
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	threads, tasks := procStatus(t, pid, "Threads"), int64(0)
	if b, err := os.ReadFile(filepath.Join(cg, "pids.current")); err == nil {
		tasks, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	t.Logf("%d clients: %d served, %d refused; server threads %d (from %d), tasks in its cgroup %d of %d, RSS %d MiB (from %d)",
		clients, len(held), refused.Load(), threads, threads0, tasks, taskCap, procStatus(t, pid, "VmRSS")>>10, rss0>>10)
	if len(held) != nbd.DefaultMaxConnections {
		t.Errorf("%d connections served, want the limit, %d", len(held), nbd.DefaultMaxConnections)
	}
	select {
	case <-s.Done():
		t.Fatalf("nbdlab serve died under %d clients:\n%s", clients, s.Output())
	default:
	}
	for i, c := range held[:10] {
		if _, err := c.ReadAt(make([]byte, 4096), int64(i)<<12); err != nil {
			t.Fatalf("a served client after the flood: %v", err)
		}
	}
	// Room for new clients once others leave.
	for _, c := range held[:100] {
		c.Close()
	}
	var late *nbd.Client
	for deadline := time.Now().Add(10 * time.Second); late == nil; time.Sleep(50 * time.Millisecond) {
		if c, err := nbd.Dial(ctx, addr.String(), nil); err == nil {
			late = c
		} else if time.Now().After(deadline) {
			t.Fatalf("no new client served after 100 left: %v", err)
		}
	}
	if _, err := late.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	late.Close()
	for _, c := range held[100:] {
		c.Close()
	}
	time.Sleep(3 * time.Second)
	threads1, rss1 := procStatus(t, pid, "Threads"), procStatus(t, pid, "VmRSS")
	t.Logf("after every client left: threads %d (peak under load %d, at start %d), RSS %d MiB (at start %d)",
		threads1, threads, threads0, rss1>>10, rss0>>10)
	// Idle clients wait in the runtime's poller: none holds a thread.
	if threads > threads0+32 {
		t.Errorf("%d threads under %d idle clients, %d at start; want at most 32 more", threads, clients, threads0)
	}
}
