package harness_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/harness"
	"github.com/nbdlab/nbdlab/internal/testenv"
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
