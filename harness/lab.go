package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/kmod"
	"github.com/nbdlab/nbdlab/vm"
)

// LabOptions configure Lab.
type LabOptions struct {
	Kernel string    // release; default the newest installed
	Out    io.Writer // default os.Stdout
}

// stepper prints numbered, timed steps.
type stepper struct {
	out   io.Writer
	n     int
	start time.Time
}

func (s *stepper) do(name string, fn func() error) error {
	s.n++
	fmt.Fprintf(s.out, "[%2d] %s\n", s.n, name)
	t := time.Now()
	err := fn()
	if err != nil {
		fmt.Fprintf(s.out, "     FAILED after %s: %v\n", time.Since(t).Round(time.Millisecond), err)
		return fmt.Errorf("%s: %w", name, err)
	}
	fmt.Fprintf(s.out, "     ok (%s)\n", time.Since(t).Round(time.Millisecond))
	return nil
}

// Lab is the main job: it builds nbd.ko for the newest installed kernel,
// boots that kernel in a lab VM, and there loads the module, serves a
// sparse image, attaches it over two connections, partitions it, makes and
// mounts ext4, writes and checks 64 MiB, reattaches and checks again, and
// detaches. It ends with one PASS or FAIL line.
func Lab(ctx context.Context, o LabOptions) (err error) {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	s := &stepper{out: o.Out, start: time.Now()}
	defer func() {
		verdict := "PASS"
		if err != nil {
			verdict = "FAIL: " + err.Error()
		}
		fmt.Fprintf(o.Out, "%s (%s in all)\n", verdict, time.Since(s.start).Round(100*time.Millisecond))
	}()
	var k vm.Kernel
	if err := s.do("find the newest installed kernel", func() error {
		var err error
		k, err = vm.FindKernel(o.Kernel, "")
		if err == nil {
			fmt.Fprintf(o.Out, "     %s (%s)\n", k.Release, k.Image)
		}
		return err
	}); err != nil {
		return err
	}
	if err := s.do("build nbd.ko for "+k.Release+" (buildNbd)", func() error {
		_, err := kmod.Build(ctx, kmod.Options{Kernel: k.Release, Out: indent(o.Out)})
		return err
	}); err != nil {
		return err
	}
	var bin string
	if err := s.do("build a static nbdlab for the guest", func() error {
		var err error
		bin, err = BuildNbdlabCached(ctx)
		return err
	}); err != nil {
		return err
	}
	return s.do("boot "+k.Release+" and run the attach, partition, ext4 and reattach steps in it", func() error {
		res, err := vm.Run(ctx, vm.Config{Kernel: k.Release, Init: bin, Timeout: 4 * time.Minute,
			Stdout: indent(o.Out), Stderr: indent(o.Out)}, bin, "lab", "--guest")
		if err != nil {
			return err
		}
		if res.ExitCode != 0 {
			return fmt.Errorf("guest steps exited %d", res.ExitCode)
		}
		return nil
	})
}

// indent prefixes each line written to w.
func indent(w io.Writer) io.Writer { return &prefixWriter{w: w, prefix: "     "} }

type prefixWriter struct {
	w       io.Writer
	prefix  string
	midLine bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	var out bytes.Buffer
	for _, c := range b {
		if !p.midLine {
			out.WriteString(p.prefix)
		}
		out.WriteByte(c)
		p.midLine = c != '\n'
	}
	if _, err := p.w.Write(out.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}

// LabGuest runs the lab's steps inside the VM. bin is the nbdlab binary.
func LabGuest(ctx context.Context, out io.Writer, bin string) error {
	s := &stepper{out: out, start: time.Now()}
	run := func(name string, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, name, args...)
		b, err := cmd.CombinedOutput()
		if err != nil {
			return string(b), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(b)))
		}
		return strings.TrimSpace(string(b)), nil
	}
	const img, sock, mnt = "/tmp/lab.img", "/run/nbdlab-lab.sock", "/mnt/lab"
	uri := "nbd+unix:///lab?socket=" + sock
	var dev string
	var sum [32]byte
	unmountAndDisconnect := func() error {
		if _, err := run("umount", mnt); err != nil {
			return err
		}
		_, err := run(bin, "disconnect", dev)
		return err
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"load the nbd.ko just built", func() error {
			if _, err := run("modprobe", "nbd"); err != nil {
				return err
			}
			f, err := run("modinfo", "-F", "filename", "nbd")
			fmt.Fprintf(out, "     %s\n", f)
			if err == nil && !strings.Contains(f, "/updates/") {
				err = fmt.Errorf("modprobe loaded %s, not the module in updates/", f)
			}
			return err
		}},
		{"serve a 512 MiB sparse image with nbdlab serve", func() error {
			if _, err := run("truncate", "-s", "512M", img); err != nil {
				return err
			}
			_, err := StartServe(ctx, bin, "--listen", "unix:"+sock, "lab=file:"+img)
			return err
		}},
		{"attach it with nbdlab connect over 2 connections", func() error {
			var err error
			dev, err = run(bin, "connect", "any", uri, "--connections", "2")
			fmt.Fprintf(out, "     %s\n", dev)
			return err
		}},
		{"write a two-partition table with sfdisk", func() error {
			cmd := exec.CommandContext(ctx, "sfdisk", "-q", dev)
			cmd.Stdin = strings.NewReader("label: dos\n,256M,L\n,,L\n")
			if b, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("sfdisk: %w: %s", err, b)
			}
			return nil
		}},
		{"check that the partitions appear", func() error { return waitPaths(dev+"p1", dev+"p2") }},
		{"make ext4 on the first partition and mount it", func() error {
			if _, err := run("mkfs.ext4", "-q", "-F", dev+"p1"); err != nil {
				return err
			}
			os.MkdirAll(mnt, 0o755)
			_, err := run("mount", dev+"p1", mnt)
			return err
		}},
		{"write 64 MiB and read it back with checksums", func() error {
			data := make([]byte, 64<<20)
			rand.Read(data)
			sum = sha256.Sum256(data)
			if err := os.WriteFile(filepath.Join(mnt, "data"), data, 0o644); err != nil {
				return err
			}
			if _, err := run("sync"); err != nil {
				return err
			}
			os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o644)
			return checkSum(filepath.Join(mnt, "data"), sum)
		}},
		{"unmount and disconnect", unmountAndDisconnect},
		{"reattach, mount and check the data is still there", func() error {
			var err error
			if dev, err = run(bin, "connect", "any", uri, "--connections", "2"); err != nil {
				return err
			}
			if err := waitPaths(dev + "p1"); err != nil {
				return err
			}
			if _, err := run("mount", dev+"p1", mnt); err != nil {
				return err
			}
			return checkSum(filepath.Join(mnt, "data"), sum)
		}},
		{"unmount and detach", unmountAndDisconnect},
	}
	for _, st := range steps {
		if err := s.do(st.name, st.fn); err != nil {
			return err
		}
	}
	return nil
}

func waitPaths(paths ...string) error {
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range paths {
		for {
			if _, err := os.Stat(p); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s did not appear within 10s", p)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

func checkSum(path string, want [32]byte) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if sha256.Sum256(data) != want {
		return errors.New("data read back differs from what was written")
	}
	return nil
}
