package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/kernels"
	"github.com/nbdlab/nbdlab/kmod"
	"github.com/nbdlab/nbdlab/labnet"
	"github.com/nbdlab/nbdlab/vm"
)

// RunNFS runs the NBD-against-NFS comparison and writes results.json,
// report.md and a plot per setup into o.Dir. With Host it runs the netns
// setups on this kernel (this is what the VMs run) and writes only
// o.JSON. Otherwise it boots one VM for the netns setups and two VMs
// linked by a QEMU socket netdev for the vms ones.
func RunNFS(ctx context.Context, o NFSOptions) (*Results, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if o.Host {
		res, err := runNFSHost(ctx, o)
		return writeHost(res, err, o.JSON)
	}
	k, work, err := prepareVM(ctx, o.Kernel, o.Out, "nfs")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	if o.Source == "" {
		if o.Source, err = goSourceTree(ctx); err != nil {
			return nil, err
		}
	}
	var netnsSetups, vmsSetups []string
	for _, s := range o.Setups {
		if strings.HasPrefix(s, "netns/") {
			netnsSetups = append(netnsSetups, s)
		} else {
			vmsSetups = append(vmsSetups, s)
		}
	}
	all := &Results{Kind: "nfs", Started: time.Now()}
	run := func(name string, setups []string, fn func(argv []string) (*vm.Result, error)) error {
		if len(setups) == 0 {
			return nil
		}
		out := filepath.Join(work, name+".json")
		argv := append([]string{vm.InitExe, "bench", "nfs", "--host", "--json", out}, o.guestArgs(setups)...)
		fmt.Fprintf(o.Out, "== %s: %s on %s\n", name, strings.Join(setups, ", "), k.Release)
		start := time.Now()
		res, err := fn(argv)
		fmt.Fprintf(o.Out, "== %s: done in %s\n", name, time.Since(start).Round(time.Second))
		if err != nil {
			return err
		}
		r, rerr := ReadResults(out)
		if rerr != nil {
			return fmt.Errorf("bench: the %s VM exited %d and left no results: %w", name, res.ExitCode, rerr)
		}
		for i := range r.Figures {
			r.Figures[i].Accel = res.Accel
		}
		all.Figures = append(all.Figures, r.Figures...)
		if res.ExitCode != 0 {
			return fmt.Errorf("bench: the %s run exited %d (figures so far are kept)", name, res.ExitCode)
		}
		return nil
	}
	cfg := vm.Config{Kernel: k.Release, Init: o.Nbdlab, Memory: "2048M", Timeout: 40 * time.Minute,
		Shares: []vm.Share{{Host: work}}, Stdout: o.Out, Stderr: o.Out}
	netnsCfg := cfg
	netnsCfg.InstructionClock = !o.HostClock
	err = run("netns", netnsSetups, func(argv []string) (*vm.Result, error) { return vm.Run(ctx, netnsCfg, argv...) })
	if err == nil {
		err = run("vms", vmsSetups, func(argv []string) (*vm.Result, error) { return runPair(ctx, cfg, argv, o.Out) })
	}
	if len(all.Figures) > 0 {
		if werr := all.WriteOutputs(o.Dir); werr != nil && err == nil {
			err = werr
		}
	}
	return all, err
}

// writeHost is the end of a --host run: its figures written to path, if
// set, whatever its error.
func writeHost(res *Results, err error, path string) (*Results, error) {
	if res != nil && path != "" {
		if werr := res.WriteJSON(path); err == nil {
			err = werr
		}
	}
	return res, err
}

// prepareVM is what a benchmark does before it boots: find the kernel,
// build its nbd.ko unless it is there, and make the directory the guest
// writes its figures into (the caller removes it).
func prepareVM(ctx context.Context, kernel string, out io.Writer, name string) (kernels.Kernel, string, error) {
	k, err := kernels.Find(kernel, "", kernels.Store{})
	if err != nil {
		return k, "", err
	}
	if _, err := kmod.Build(ctx, kmod.Options{Kernel: k.Release, OverDistro: true, Out: out}); err != nil {
		return k, "", fmt.Errorf("bench: nbd.ko for %s: %w", k.Release, err)
	}
	work, err := os.MkdirTemp("", "nbdlab-bench-"+name+"-")
	return k, work, err
}

// guestArgs passes the options on to the client inside a VM.
func (o NFSOptions) guestArgs(setups []string) []string {
	args := []string{"--source", o.Source, "--files", strconv.Itoa(o.Files), "--small", strconv.Itoa(o.Small),
		"--fio-size", strconv.FormatInt(o.FioSize, 10), "--fio-time", o.FioTime.String(),
		"--rounds", strconv.Itoa(o.Rounds), "--connections", strconv.Itoa(o.Connections), "--server", o.Server}
	for _, s := range setups {
		args = append(args, "--setup", s)
	}
	for _, t := range o.Targets {
		args = append(args, "--target", t)
	}
	return args
}

// runPair boots the server VM (the agent) and the client VM running argv,
// linked by a socket netdev, and returns how the client ended.
func runPair(ctx context.Context, cfg vm.Config, argv []string, out io.Writer) (*vm.Result, error) {
	a, b, err := vm.LinkedNICs()
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	server := cfg
	server.NIC = &a
	server.Stdout, server.Stderr = prefixWriter{"server vm: ", out}, prefixWriter{"server vm: ", out}
	done := make(chan error, 1)
	go func() {
		_, err := vm.Run(sctx, server, vm.InitExe, "bench", "agent", "--nic", labnet.VMAddr(0).String(),
			"--backing", "/run/nbdlab-bench-backing")
		done <- err
	}()
	client := cfg
	client.NIC = &b
	argv = append(argv, "--agent", labnet.VMAddr(0).String(), "--nic", labnet.VMAddr(1).String())
	res, err := vm.Run(ctx, client, argv...)
	select {
	case serr := <-done:
		if serr != nil && err == nil {
			fmt.Fprintf(out, "server vm: %v\n", serr)
		}
	case <-time.After(30 * time.Second):
		cancel()
		<-done
	}
	return res, err
}

// prefixWriter prefixes what it writes, so two VMs' output can be told
// apart. Writes are line-sized in practice (the VM relays whole writes).
type prefixWriter struct {
	prefix string
	w      io.Writer
}

func (p prefixWriter) Write(b []byte) (int, error) {
	if _, err := p.w.Write(append([]byte(p.prefix), b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// goSourceTree is the Go distribution's source: real code, present
// wherever nbdlab is built.
func goSourceTree(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOROOT").Output()
	if err != nil {
		return "", fmt.Errorf("bench: go env GOROOT (the untar workload's tree; or give --tree): %w", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "src"), nil
}

// WriteOutputs writes results.json, report.md and the plots into dir
// and names them.
func (r *Results) WriteOutputs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := r.WriteJSON(filepath.Join(dir, "results.json")); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "report.md"))
	if err != nil {
		return err
	}
	write := r.WriteNFSReport
	if r.Kind == "kernel" {
		write = r.WriteKernelReport
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return r.plot(dir)
}
