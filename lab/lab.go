// Package lab is nbdlab's main job, end to end: build nbd.ko for a kernel
// from its distribution's source, boot that kernel in a lab VM, and there
// load the module, serve a sparse image with nbdlab serve, attach it over
// two connections, partition it, make and mount ext4, write and check
// data, reattach, check again and detach.
//
// Lab runs on the host and needs root (it installs the module into the
// kernel's tree), QEMU and the kernel's packages; Guest is the half that
// runs inside the VM. The nbdlab binary given must be static: it is the
// VM's init.
package lab

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/internal/command"
	"github.com/nbdlab/nbdlab/internal/step"
	"github.com/nbdlab/nbdlab/kernels"
	"github.com/nbdlab/nbdlab/kmod"
	"github.com/nbdlab/nbdlab/servers"
	"github.com/nbdlab/nbdlab/vm"
)

// Options configure Lab.
type Options struct {
	Kernel string    // release; default the newest installed
	Nbdlab string    // the static nbdlab binary to boot as init; default this executable
	Out    io.Writer // default os.Stdout
}

// Lab is the main job: it builds nbd.ko for the kernel, boots the kernel
// in a lab VM and runs Guest there. It ends with one PASS or FAIL line.
func Lab(ctx context.Context, o Options) (err error) {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	s := step.New(o.Out, 4)
	defer func() {
		verdict := "PASS"
		if err != nil {
			verdict = "FAIL: " + err.Error()
		}
		fmt.Fprintf(o.Out, "%s (%s in all)\n", verdict, s.Elapsed().Round(100*time.Millisecond))
	}()
	if err := s.Do("check that nbdlab can be the VM's init", func() error {
		var err error
		o.Nbdlab, err = initBinary(o.Nbdlab)
		return err
	}); err != nil {
		return err
	}
	var k kernels.Kernel
	if err := s.Do("find the kernel", func() error {
		var err error
		k, err = kernels.Find(o.Kernel, "", kernels.Store{})
		if err == nil {
			s.Printf("%s (%s, %s)", k.Release, k.Origin, k.Image)
		}
		return err
	}); err != nil {
		return err
	}
	if err := s.Do("build nbd.ko for "+k.Release+" (buildNbd)", func() error {
		_, err := kmod.Build(ctx, kmod.Options{Kernel: k.Release, OverDistro: true, Out: step.Indented(o.Out)})
		return err
	}); err != nil {
		return err
	}
	return s.Do("boot "+k.Release+" and run the attach, partition, ext4 and reattach steps in it", func() error {
		res, err := vm.Run(ctx, vm.Config{Kernel: k.Release, Init: o.Nbdlab, Timeout: 4 * time.Minute,
			Stdout: step.Indented(o.Out), Stderr: step.Indented(o.Out)}, vm.InitExe, "lab", "--guest")
		if err != nil {
			return err
		}
		if res.ExitCode != 0 {
			return fmt.Errorf("guest steps exited %d", res.ExitCode)
		}
		return nil
	})
}

// initBinary returns bin, or this executable when bin is empty, if it
// can be a VM's init.
func initBinary(bin string) (string, error) {
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", err
		}
		bin = exe
	}
	return bin, vm.CheckInit(bin)
}

// Guest runs the lab's steps inside the VM. bin is the nbdlab binary.
func Guest(ctx context.Context, out io.Writer, bin string) error {
	s := step.New(out, 0)
	run := func(name string, args ...string) (string, error) {
		return command.Combined(ctx, command.Exec, name, args...)
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
			s.Printf("%s", f)
			if err == nil && !strings.Contains(f, "/updates/") {
				err = fmt.Errorf("modprobe loaded %s, not the module in updates/", f)
			}
			return err
		}},
		{"serve a 512 MiB sparse image with nbdlab serve", func() error {
			if _, err := run("truncate", "-s", "512M", img); err != nil {
				return err
			}
			_, err := servers.StartServe(ctx, bin, "--listen", "unix:"+sock, "lab=file:"+img)
			return err
		}},
		{"attach it with nbdlab connect over 2 connections", func() error {
			var err error
			dev, err = run(bin, "connect", "any", uri, "--connections", "2")
			s.Printf("%s", dev)
			return err
		}},
		{"write a two-partition table with sfdisk", func() error {
			const table = "/tmp/lab.sfdisk"
			if err := os.WriteFile(table, []byte("label: dos\n,256M,L\n,,L\n"), 0o644); err != nil {
				return err
			}
			_, err := run("sh", "-c", "sfdisk -q "+dev+" < "+table)
			return err
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
	s.Total = len(steps)
	for _, st := range steps {
		if err := s.Do(st.name, st.fn); err != nil {
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
