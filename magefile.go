//go:build mage

// Build targets. Each is a thin call into the project's packages; run them
// with "go run mage.go TARGET" (no mage install needed).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/magefile/mage/mg"
	"github.com/magefile/mage/sh"

	"github.com/nbdlab/nbdlab/bench"
	"github.com/nbdlab/nbdlab/ci"
	"github.com/nbdlab/nbdlab/conform/kernelsuite"
	"github.com/nbdlab/nbdlab/conform/protocol"
	"github.com/nbdlab/nbdlab/internal/command"
	"github.com/nbdlab/nbdlab/kmod"
	"github.com/nbdlab/nbdlab/lab"
)

// binary is where Build puts the static nbdlab.
const binary = "bin/nbdlab"

// ConformServers checks nbdlab serve, nbdkit, qemu-nbd and nbd-server against the NBD specification (reports in conform-report/).
func ConformServers(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps)
	return protocol.RunPeers(ctx, protocol.PeersOptions{})
}

// Conform runs the kernel suite on every kernel of the matrix against every server (KERNELS=, SERVERS= to narrow); reports in conform-report/kernel/.
func Conform(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps, Build, Kernels)
	bin, err := filepath.Abs(binary)
	if err != nil {
		return err
	}
	o := kernelsuite.Options{Nbdlab: bin, Servers: strings.Fields(os.Getenv("SERVERS"))}
	if o.Kernels, err = matrixKernels(ctx); err != nil {
		return err
	}
	return kernelsuite.RunReports(ctx, o, filepath.Join("conform-report", "kernel"))
}

// ConformStress repeats the attach cases (nbd001 over netlink and ioctl, signals to the ioctl client, nbd003, 8 concurrent connects to any) 20 times with nbdlab-file on every kernel of the matrix, stress-ng --cpu 2 beside the VMs (KERNELS=, ROUNDS= to change).
func ConformStress(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps, Build, Kernels)
	bin, err := filepath.Abs(binary)
	if err != nil {
		return err
	}
	rounds := 20
	if r := os.Getenv("ROUNDS"); r != "" {
		if rounds, err = strconv.Atoi(r); err != nil || rounds < 1 {
			return fmt.Errorf("ROUNDS=%q: want a number of rounds", r)
		}
	}
	o := kernelsuite.Options{Nbdlab: bin, Servers: []string{"nbdlab-file"}, Run: kernelsuite.AttachCases,
		Repeat: rounds, StressCPU: 2, EveryServer: true}
	if o.Kernels, err = matrixKernels(ctx); err != nil {
		return err
	}
	return kernelsuite.RunReports(ctx, o, filepath.Join("conform-report", "stress"))
}

// matrixKernels is the kernel matrix's releases when KERNELS= narrows
// it, else none (every kernel installed or fetched).
func matrixKernels(ctx context.Context) ([]string, error) {
	if os.Getenv("KERNELS") == "" {
		return nil, nil
	}
	ks, err := ci.Kernels(ctx, os.Stdout, ci.Matrix())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range ks {
		out = append(out, k.Release)
	}
	return out, nil
}

// Bench groups the benchmarks; each prints figures and ratios against peers
// measured in the same run.
type Bench mg.Namespace

// Server runs fio against nbdlab serve, nbdkit and qemu-nbd (BENCH_TIME=seconds per job, BENCH_ROUNDS=rounds).
func (Bench) Server(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps)
	return bench.RunServer(ctx, bench.Options{})
}

// NFS compares ext4 on NBD with NFS (v4.2 and v3, sync and async) from the same server, in a namespace and across two VMs (KVER=release; reports in bench-report/nfs/).
func (Bench) NFS(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps, Build)
	bin, err := filepath.Abs(binary)
	if err != nil {
		return err
	}
	dir := filepath.Join("bench-report", "nfs")
	res, err := bench.RunNFS(ctx, bench.NFSOptions{Kernel: os.Getenv("KVER"), Nbdlab: bin, Dir: dir})
	if res != nil && len(res.Figures) > 0 {
		res.WriteNFSReport(os.Stdout)
		printOutputs(res, dir)
	}
	return err
}

// Kernel runs fio on /dev/nbdN in a VM against nbdlab serve, nbd-server, nbdkit and qemu-nbd, 1 and 4 connections (KVER=release; reports in bench-report/kernel/).
func (Bench) Kernel(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps, Build)
	bin, err := filepath.Abs(binary)
	if err != nil {
		return err
	}
	dir := filepath.Join("bench-report", "kernel")
	res, err := bench.RunKernel(ctx, bench.KernelOptions{Kernel: os.Getenv("KVER"), Nbdlab: bin, Dir: dir})
	if res != nil && len(res.Figures) > 0 {
		res.WriteKernelReport(os.Stdout)
		printOutputs(res, dir)
	}
	return err
}

// printOutputs names the files a benchmark wrote.
func printOutputs(res *bench.Results, dir string) {
	fmt.Println("written:")
	for _, f := range res.Outputs(dir) {
		fmt.Println("  " + f)
	}
}

// Lab is the main job: build nbd.ko for the newest installed kernel, boot it, attach, partition, mount, check.
func Lab(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps, Build)
	bin, err := filepath.Abs(binary)
	if err != nil {
		return err
	}
	return lab.Lab(ctx, lab.Options{Kernel: os.Getenv("KVER"), Nbdlab: bin})
}

// Deps installs every Debian package the tests and benchmarks use.
func Deps(ctx context.Context) error {
	return ci.Deps(ctx, command.Exec, os.Stdout, ci.Packages())
}

// Lint runs gofmt, go vet, staticcheck and actionlint.
func Lint(ctx context.Context) error {
	return ci.Lint(ctx, command.Exec, os.Stdout)
}

// Test groups the test tiers; "go run mage.go test" is test:all.
type Test mg.Namespace

// Aliases: "test" is the README's test command.
var Aliases = map[string]any{"test": Test.All}

// All installs what is needed, lints, fetches the kernel matrix and runs both tiers: the unit tests, and the VM tests on the matrix.
func (Test) All(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps)
	mg.CtxDeps(ctx, Lint)
	mg.CtxDeps(ctx, Kernels)
	return ci.Test(ctx, command.Exec, os.Stdout, ci.VM)
}

// Unit runs the tests that need neither root nor VMs, in under two minutes.
func (Test) Unit(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps)
	return ci.Test(ctx, command.Exec, os.Stdout, ci.Unit)
}

// VM runs the tests behind the vm build tag (they boot lab VMs or need root) with the unit tests, on the fetched kernel matrix, then the fuzzers.
func (Test) VM(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps)
	mg.CtxDeps(ctx, Kernels)
	return ci.Test(ctx, command.Exec, os.Stdout, ci.VM)
}

// Kernels fetches the kernel matrix (installed, newest trixie-backports, newest sid; KERNELS= to change) and builds nbd.ko for each.
func Kernels(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps)
	_, err := ci.Kernels(ctx, os.Stdout, ci.Matrix())
	return err
}

// VM boots a lab VM 5 times running true and prints the median wall time (KVER=release).
func (Bench) VM(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps)
	return bench.RunVM(ctx, bench.VMOptions{Kernel: os.Getenv("KVER")})
}

// FuzzQcow2 writes random and damaged qcow2 images through nbdlab and qemu-io alike and compares them (IMAGES=1000, OPS=12, SEED= from the clock).
func FuzzQcow2(ctx context.Context) error {
	mg.CtxDeps(ctx, Deps)
	images, ops, seed := 1000, 12, uint64(time.Now().Unix())
	for _, v := range []struct {
		env string
		to  *int
	}{{"IMAGES", &images}, {"OPS", &ops}} {
		if s := os.Getenv(v.env); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return fmt.Errorf("%s=%q: want a positive number", v.env, s)
			}
			*v.to = n
		}
	}
	if s := os.Getenv("SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SEED=%q: want a number", s)
		}
		seed = n
	}
	return ci.Differential(ctx, command.Exec, os.Stdout, images, ops, seed)
}

// BuildNbd builds nbd.ko for the running kernel, or KVER=release, and installs it (FORCE=1 rebuilds).
func BuildNbd(ctx context.Context) error {
	_, err := kmod.Build(ctx, kmod.Options{Kernel: os.Getenv("KVER"), Force: os.Getenv("FORCE") == "1"})
	return err
}

// Build builds a static nbdlab binary into ./bin, stamped with its revision (nbdlab --version).
func Build() error {
	// -buildvcs=auto over a GOFLAGS that turns the stamp off (some
	// machines set -buildvcs=false): a bug report names its build.
	return sh.RunWithV(map[string]string{"CGO_ENABLED": "0"}, "go", "build", "-buildvcs=auto", "-o", binary, "./cmd/nbdlab")
}
