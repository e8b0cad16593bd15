package procfs

import (
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		want     Stat
		wantErr  bool
	}{
		{name: "plain", in: "42 (nbdlab) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0",
			want: Stat{State: 'S', PPID: 1, CPU: 3 * time.Second, User: 2500 * time.Millisecond}},
		{name: "name with spaces and parens", in: "7 (a (b) c) Z 1 7 7 0 -1 0 0 0 0 0 1 1 0 0",
			want: Stat{State: 'Z', PPID: 1, CPU: 20 * time.Millisecond, User: 10 * time.Millisecond}},
		{name: "cut short", in: "7 (x) R 1 2", wantErr: true},
		{name: "no name", in: "7 x R", wantErr: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat("/proc/x/stat", tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("parseStat = %+v, %v; want %+v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestAliveAndPeakRSS(t *testing.T) {
	if !Alive(os.Getpid()) {
		t.Fatal("this process is not alive")
	}
	if rss, err := PeakRSS(os.Getpid()); err != nil || rss < 1<<20 {
		t.Fatalf("PeakRSS = %d, %v", rss, err)
	}
	if n, err := Status(os.Getpid(), "Threads"); err != nil || n < 1 {
		t.Fatalf("Status(Threads) = %d, %v", n, err)
	}
	if _, err := Status(os.Getpid(), "NoSuchField"); err == nil {
		t.Fatal("Status of a field /proc does not have succeeded")
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	for deadline := time.Now().Add(5 * time.Second); Alive(pid) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if Alive(pid) {
		t.Fatal("an exited child (a zombie until waited for) still counts as alive")
	}
	cmd.Wait()
	if Alive(pid) {
		t.Fatal("a reaped process counts as alive")
	}
}

func TestStopped(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	pid := cmd.Process.Pid
	if Stopped(pid) {
		t.Fatal("a sleeping process reads as stopped")
	}
	cmd.Process.Signal(syscall.SIGSTOP)
	deadline := time.Now().Add(5 * time.Second)
	for !Stopped(pid) {
		if time.Now().After(deadline) {
			t.Fatal("not stopped 5 s after SIGSTOP")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if Stopped(1 << 30) {
		t.Error("a process that does not exist reads as stopped")
	}
	// A child that has exited and is not yet reaped is a zombie: it will
	// never run again.
	z := exec.Command("true")
	if err := z.Start(); err != nil {
		t.Fatal(err)
	}
	defer z.Wait()
	deadline = time.Now().Add(5 * time.Second)
	for !Stopped(z.Process.Pid) {
		if time.Now().After(deadline) {
			t.Fatal("an exited, unreaped child does not read as stopped")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTree finds a child and a grandchild of a shell, and nothing of a
// process with no children.
func TestTree(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sh -c 'sleep 30; true' & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, p := range Tree(cmd.Process.Pid) {
			syscall.Kill(p, syscall.SIGKILL)
		}
		cmd.Wait()
	}()
	deadline := time.Now().Add(5 * time.Second)
	for len(Tree(cmd.Process.Pid)) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("tree of the shell: %v, want it, its child and its grandchild", Tree(cmd.Process.Pid))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := Tree(cmd.Process.Pid); got[0] != cmd.Process.Pid {
		t.Errorf("tree %v does not start with the root %d", got, cmd.Process.Pid)
	}
	if got := Tree(1 << 30); len(got) != 1 {
		t.Errorf("tree of a pid that does not exist: %v", got)
	}
}

func TestParseSystemCPU(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		// user nice system idle iowait irq softirq steal guest guest_nice
		{"cpu  100 5 50 9000 40 1 4 0 30 0\ncpu0 1 2 3\n", 160 * time.Second / 100, false},
		{"cpu  1 2 3 4\n", 0, true},
		{"intr 1 2 3 4 5\n", 0, true},
		{"cpu  1 x 3 4 5 6\n", 0, true},
	} {
		got, err := parseSystemCPU(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseSystemCPU(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestParseStatus(t *testing.T) {
	fields := []string{"voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"}
	for _, tt := range []struct {
		name, in string
		want     []int64
		wantErr  bool
	}{
		{"both", "Name:\tx\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n", []int64{120, 7}, false},
		{"in the other order", "nonvoluntary_ctxt_switches:\t7\nvoluntary_ctxt_switches:\t120\n", []int64{120, 7}, false},
		{"one missing", "voluntary_ctxt_switches:\t120\n", nil, true},
		{"not a number", "voluntary_ctxt_switches:\tmany\nnonvoluntary_ctxt_switches:\t7\n", nil, true},
		{"empty", "voluntary_ctxt_switches:\nnonvoluntary_ctxt_switches:\t7\n", nil, true},
	} {
		got, err := parseStatus("status", tt.in, fields...)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %v, %v; want %v (error: %v)", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

// A process that sleeps in a loop blocks each time: its voluntary
// switches grow, summed over every thread it has.
func TestReadSwitches(t *testing.T) {
	before, err := ReadSwitches(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		time.Sleep(time.Millisecond)
	}
	after, err := ReadSwitches(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := after.Voluntary - before.Voluntary; d < 10 {
		t.Errorf("20 sleeps made %d voluntary switches, want at least 10", d)
	}
	if _, err := ReadSwitches(1 << 30); err == nil {
		t.Error("no error for a process that does not exist")
	}
}
