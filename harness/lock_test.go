package harness_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/harness"
	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/servers"
)

// Two writers on one image are refused, whichever of nbdlab and qemu-nbd
// comes first, the way qemu-nbd refuses qemu-nbd; readers share, and
// --force-share reads under a writer.
func TestServeLocksImages(t *testing.T) {
	testenv.Need(t, "qemu-img", "qemu-nbd")
	bin := testenv.Nbdlab(t)
	serve := func(args ...string) (*servers.Nbdlab, error) {
		return servers.StartServe(context.Background(), bin, append([]string{"--listen", "127.0.0.1:0"}, args...)...)
	}
	for _, format := range []string{"raw", "qcow2"} {
		kind := map[string]string{"raw": "file", "qcow2": "qcow2"}[format]
		t.Run(format, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "shared."+format)
			harness.Run(t, "qemu-img", "create", "-q", "-f", format, img, "64M")
			export := "d=" + kind + ":" + img

			first, err := serve(export)
			if err != nil {
				t.Fatal(err)
			}
			_, err = serve(export)
			if err == nil {
				t.Fatal("a second nbdlab serve opened the image read-write")
			}
			want := img + " is in use"
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(first.Cmd.Process.Pid)+" nbdlab") {
				t.Errorf("second writer's error does not say %q and name the first server:\n%v", want, err)
			}
			if _, err := serve(export + ",ro"); err == nil {
				t.Error("a reader opened the image under a writer without --force-share")
			}
			if s, err := serve("--force-share", export+",ro"); err != nil {
				t.Errorf("--force-share reader under a writer: %v", err)
			} else {
				s.Stop(0)
			}
			out, err := exec.Command("qemu-nbd", "-t", "-f", format, "-k", filepath.Join(t.TempDir(), "s"), img).CombinedOutput()
			if err == nil || !strings.Contains(string(out), `"write" lock`) {
				t.Errorf("qemu-nbd opened an image nbdlab serves read-write (%v):\n%s", err, out)
			}
			first.Stop(0)

			// qemu-nbd first: nbdlab refuses and names it.
			dir := t.TempDir()
			harness.Run(t, "qemu-nbd", "--fork", "--pid-file", filepath.Join(dir, "pid"), "-k", filepath.Join(dir, "s"), "-f", format, img)
			b, _ := os.ReadFile(filepath.Join(dir, "pid"))
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			t.Cleanup(func() { exec.Command("kill", strconv.Itoa(pid)).Run() })
			_, err = serve(export)
			if err == nil || !strings.Contains(err.Error(), "pid "+strconv.Itoa(pid)+" qemu-nbd") {
				t.Errorf("nbdlab serve under qemu-nbd: %v, want a refusal naming qemu-nbd (pid %d)", err, pid)
			}
		})
	}
	// Readers share.
	img := filepath.Join(t.TempDir(), "ro.img")
	harness.Run(t, "qemu-img", "create", "-q", "-f", "raw", img, "1M")
	for range 2 {
		s, err := serve("d=file:" + img + ",ro")
		if err != nil {
			t.Fatalf("readers refused each other: %v", err)
		}
		defer s.Stop(0)
	}
}
