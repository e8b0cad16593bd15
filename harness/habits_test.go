package harness_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/harness"
	"github.com/nbdlab/nbdlab/internal/testenv"
	"golang.org/x/sys/unix"
)

// nbdlab serve takes qemu-nbd's spellings and means by them what qemu-nbd
// means: the same command line, -t -k SOCKET -x NAME -f raw -s -e 2 IMAGE,
// run by both, answers the same client the same way: the export has that
// name on that socket, a write on one connection is read on the next, two
// connections are served, and the image is never modified.
func TestServeSpeaksQemuNbd(t *testing.T) {
	testenv.Need(t, "qemu-nbd", "qemu-io", "nbdinfo")
	img, data := randomFile(t, 1<<20)
	for _, server := range []string{"qemu-nbd", "nbdlab"} {
		t.Run(server, func(t *testing.T) {
			dir := t.TempDir()
			sock, pidFile := filepath.Join(dir, "s"), filepath.Join(dir, "pid")
			// --fork returns once the server listens, for both.
			argv := []string{"-t", "-k", sock, "-x", "disk", "-f", "raw", "-s", "-e", "2", "--fork", "--pid-file", pidFile, img}
			if server == "nbdlab" {
				harness.Run(t, testenv.Nbdlab(t), append([]string{"serve"}, argv...)...)
			} else {
				harness.Run(t, "qemu-nbd", argv...)
			}
			b, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatal(err)
			}
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			stop := func() { exec.Command("kill", strconv.Itoa(pid)).Run() }
			defer stop()
			uri := "nbd+unix:///disk?socket=" + sock
			harness.Run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 4096 8192", uri)
			out := harness.Run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 4096 8192", uri)
			if strings.Contains(out, "Pattern verification failed") {
				t.Fatalf("the next connection does not read the write:\n%s", out)
			}
			if out := harness.Run(t, "nbdinfo", "--list", "nbd+unix:///?socket="+sock); !strings.Contains(out, `export="disk"`) {
				t.Fatalf("no export named disk:\n%s", out)
			}
			if got, _ := os.ReadFile(img); !bytes.Equal(got, data) {
				t.Fatal("-s modified the image")
			}
		})
	}
}

// --run is nbdkit's captive mode: the command runs once the server
// listens, with $uri set, and serve ends with the command's status.
func TestServeRunCaptive(t *testing.T) {
	testenv.Need(t, "nbdinfo")
	bin := testenv.Nbdlab(t)
	for _, tt := range []struct {
		status string
		code   int
	}{{"0", 0}, {"3", 3}} {
		cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--run", `nbdinfo --size "$uri"; echo "port=$port"; exit `+tt.status, "d=mem:1M")
		out, err := cmd.Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tt.code || !strings.Contains(string(out), "1048576\n") || !strings.Contains(string(out), "port=") || strings.Contains(string(out), "port=\n") {
			t.Errorf("--run exiting %s: serve exited %d, printed %q; want %d, the export's size and the port", tt.status, code, out, tt.code)
		}
	}
}

// --exit-with-parent: serve stops when the process that started it dies,
// even by SIGKILL.
func TestServeExitWithParent(t *testing.T) {
	bin := testenv.Nbdlab(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sock := filepath.Join(t.TempDir(), "s")
	parent := exec.Command("sh", "-c", bin+` serve --exit-with-parent --ready-fd 3 --listen unix:`+sock+` d=mem:1M 2>/dev/null & echo $!; wait`)
	parent.ExtraFiles = []*os.File{w}
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	var pid int
	if _, err := fmt.Fscan(out, &pid); err != nil {
		t.Fatal(err)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("serve (pid %d) is already gone: %v", pid, err)
	}
	defer unix.Close(pidfd)
	ready := make([]byte, 2)
	if _, err := io.ReadFull(r, ready); err != nil || string(ready) != "ok" {
		t.Fatalf("serve did not get ready (%q, %v)", ready, err)
	}
	parent.Process.Kill()
	parent.Wait()
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	if n, _ := unix.Poll(fds, 20000); n != 1 {
		unix.Kill(pid, unix.SIGKILL)
		t.Fatal("serve still runs 20 s after its parent was killed")
	}
}
