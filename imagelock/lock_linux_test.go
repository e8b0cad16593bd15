package imagelock

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/internal/testenv"
	"golang.org/x/sys/unix"
)

func openLocked(t *testing.T, path string, m Mode) (*os.File, error) {
	t.Helper()
	flag := os.O_RDONLY
	if m == Writer {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, Lock(f, m)
}

func newImage(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Two opens in one process are two open file descriptions, as two
// processes would have: the table is the rule of the package doc.
func TestLockModes(t *testing.T) {
	tests := []struct {
		first, second Mode
		right         Right // the conflict, when want is set
		held          bool
		want          bool
	}{
		{first: Writer, second: Writer, want: true, right: Write, held: false},
		{first: Writer, second: Reader, want: true, right: Write, held: true},
		{first: Reader, second: Writer, want: true, right: Write, held: false},
		{first: Reader, second: Reader},
		{first: Writer, second: ForceShare},
		{first: ForceShare, second: Writer},
		{first: ForceShare, second: Reader},
	}
	for _, tt := range tests {
		t.Run(tt.first.String()+"_then_"+tt.second.String(), func(t *testing.T) {
			p := newImage(t)
			if _, err := openLocked(t, p, tt.first); err != nil {
				t.Fatalf("first open %s: %v", tt.first, err)
			}
			_, err := openLocked(t, p, tt.second)
			var ce *ConflictError
			switch {
			case !tt.want && err != nil:
				t.Fatalf("second open %s: %v, want no conflict", tt.second, err)
			case !tt.want:
				return
			case !errors.As(err, &ce):
				t.Fatalf("second open %s: %v, want a *ConflictError", tt.second, err)
			}
			if ce.Right != tt.right || ce.Held != tt.held || ce.Path != p || ce.Mode != tt.second {
				t.Errorf("conflict %+v, want right %v held %v on %s", ce, tt.right, tt.held, p)
			}
			if len(ce.Holders) != 1 || ce.Holders[0].Pid != os.Getpid() {
				t.Errorf("holders %v, want this process alone", ce.Holders)
			}
			if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
				t.Errorf("error %q names neither the image nor its holder", err)
			}
		})
	}
}

// A writer's locks go when its file closes, and a refused open leaves no
// lock behind that would refuse the next one.
func TestLockGoesWithTheFile(t *testing.T) {
	p := newImage(t)
	w, err := openLocked(t, p, Writer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openLocked(t, p, Writer); err == nil {
		t.Fatal("a second writer was let in")
	}
	w.Close()
	if _, err := openLocked(t, p, Writer); err != nil {
		t.Fatalf("after the first writer closed: %v", err)
	}
}

// qemu and nbdlab refuse each other, both ways, with QEMU's own tools.
func TestLockAgainstQemu(t *testing.T) {
	testenv.Need(t, "qemu-img", "qemu-io", "qemu-nbd")
	for _, format := range []string{"raw", "qcow2"} {
		t.Run(format, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "disk."+format)
			run(t, "qemu-img", "create", "-q", "-f", format, p, "16M")

			// qemu-nbd writes: nbdlab may neither write nor read it, but
			// may force-share; the error names qemu-nbd.
			pid := startQemuNbd(t, format, p)
			for _, m := range []Mode{Writer, Reader} {
				_, err := openLocked(t, p, m)
				var ce *ConflictError
				if !errors.As(err, &ce) {
					t.Fatalf("%s open while qemu-nbd writes: %v, want a conflict", m, err)
				}
				if !hasHolder(ce.Holders, pid) {
					t.Errorf("%s open: holders %v do not name qemu-nbd (pid %d)", m, ce.Holders, pid)
				}
			}
			if _, err := openLocked(t, p, ForceShare); err != nil {
				t.Errorf("force-share while qemu-nbd writes: %v", err)
			}
			stop(t, pid)

			// nbdlab writes: qemu may neither write nor read it, but may
			// with -U.
			w, err := openLocked(t, p, Writer)
			if err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("qemu-io", "-f", format, "-c", "write 0 4k", p).CombinedOutput(); err == nil || !strings.Contains(string(out), `"write" lock`) {
				t.Errorf("qemu-io wrote while nbdlab writes (%v): %s", err, out)
			}
			// qemu's readers of raw images share write (qemu-nbd -r
			// too); of qcow2 images they do not.
			if out, err := exec.Command("qemu-img", "info", "-f", format, p).CombinedOutput(); format == "qcow2" && (err == nil || !strings.Contains(string(out), `shared "write" lock`)) {
				t.Errorf("qemu-img info read while nbdlab writes (%v): %s", err, out)
			}
			run(t, "qemu-img", "info", "-U", "-f", format, p)
			w.Close()

			// nbdlab reads: qemu may read, not write.
			if _, err := openLocked(t, p, Reader); err != nil {
				t.Fatal(err)
			}
			run(t, "qemu-img", "info", "-f", format, p)
			if out, err := exec.Command("qemu-io", "-f", format, "-c", "write 0 4k", p).CombinedOutput(); err == nil {
				t.Errorf("qemu-io wrote while nbdlab reads: %s", out)
			}
		})
	}
}

func hasHolder(hs []Holder, pid int) bool {
	for _, h := range hs {
		if h.Pid == pid && h.Command == "qemu-nbd" {
			return true
		}
	}
	return false
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// startQemuNbd serves p read-write on a unix socket; --fork returns once
// the image is open and its locks taken.
func startQemuNbd(t *testing.T, format, p string) int {
	t.Helper()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	run(t, "qemu-nbd", "--fork", "--persistent", "--pid-file", pidFile, "-k", filepath.Join(dir, "sock"), "-f", format, p)
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(pid, unix.SIGKILL) })
	return pid
}

// stop kills qemu-nbd and waits until it is gone: it is not our child,
// so its exit is seen through a pidfd turning readable.
func stop(t *testing.T, pid int) {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd of qemu-nbd %d: %v", pid, err)
	}
	defer unix.Close(pidfd)
	unix.Kill(pid, unix.SIGTERM)
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 30000); n != 1 {
		t.Fatalf("qemu-nbd %d still running 30 s after SIGTERM (%v)", pid, err)
	}
}
