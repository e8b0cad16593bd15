package kmod

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdlab/nbdlab/internal/cachedir"
	"github.com/nbdlab/nbdlab/internal/command"
	"github.com/nbdlab/nbdlab/internal/step"
	"github.com/nbdlab/nbdlab/kernels"
)

// Options configure Build. The zero value builds for the running kernel.
type Options struct {
	Kernel string // KVER; default the running kernel
	Source string // a local source tree instead of fetching one
	Force  bool   // rebuild over an installed nbd.ko; build beside the distribution's; accept a near source version
	// OverDistro builds and installs nbd.ko even where the distribution
	// ships its own, which it then shadows (from updates/); without it, or
	// Force, such a kernel is left alone. The lab sets it: it tests the
	// build itself.
	OverDistro bool
	DryRun     bool   // print every step without doing it
	Prefix     string // install under this root instead of /
	SignKey    string // private key to sign with, where signatures are enforced
	SignCert   string // its certificate
	Jobs       int    // make -j; default the number of CPUs
	CacheDir   string // default the user cache directory's nbdlab/kmod
	Root       string // where to inspect the system; default /
	Out        io.Writer
	Run        command.Runner
	Env        *Env // provider environment; built from the above when nil
}

// Result says what Build did.
type Result struct {
	Target    *Target
	Module    string // the installed nbd.ko
	Skipped   string // why nothing was built, when nothing was
	Vermagic  string
	Steps     []Step
	BuildLog  string
	TotalTime time.Duration
}

// Step is one timed step of a build.
type Step = step.Step

type builder struct {
	o     Options
	res   *Result
	env   *Env
	log   *os.File
	steps *step.Printer
	start time.Time
}

func (b *builder) printf(format string, a ...any) { fmt.Fprintf(b.o.Out, format+"\n", a...) }

// step runs fn as the next of the build's five steps.
func (b *builder) step(name string, fn func() error) error {
	err := b.steps.Do(name, fn)
	b.res.Steps = b.steps.Steps
	return err
}

// runLogged runs a command with its output in the build log.
func (b *builder) runLogged(ctx context.Context, dir, name string, args ...string) error {
	fmt.Fprintf(b.log, "\n$ (cd %s && %s %s)\n", dir, name, strings.Join(args, " "))
	var w io.Writer = b.log
	if name == "make" && len(args) > 0 {
		w = newMakeProgress(b.log, b.o.Out, "make "+args[len(args)-1])
	}
	if err := b.o.Run(ctx, dir, w, w, name, args...); err != nil {
		return fmt.Errorf("%w (full log: %s)", err, b.log.Name())
	}
	return nil
}

func runningRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// Build inspects, fetches, builds, verifies and installs nbd.ko.
func Build(ctx context.Context, o Options) (*Result, error) {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Run == nil {
		o.Run = command.Exec
	}
	if o.Root == "" {
		o.Root = "/"
	}
	if o.Jobs == 0 {
		o.Jobs = runtime.NumCPU()
	}
	if o.CacheDir == "" {
		o.CacheDir = cachedir.Dir("kmod")
	}
	running := runningRelease()
	if o.Kernel == "" {
		o.Kernel = running
	}
	// A kernel fetched into the cache is inspected, built for and
	// installed into in its own tree.
	var fetched *kernels.Kernel
	if k, err := kernels.Find(o.Kernel, "", kernels.Store{}); err == nil && k.IsFetched() {
		fetched = &k
		o.Kernel, o.Root = k.Release, k.Root
		if o.Prefix == "" {
			o.Prefix = k.Root
		}
	} else if kernels.IsSpec(o.Kernel) {
		return nil, err
	}
	b := &builder{o: o, res: &Result{}, start: time.Now(), steps: step.New(o.Out, 5)}
	defer func() { b.res.TotalTime = time.Since(b.start) }()
	b.env = o.Env
	if b.env == nil {
		b.env = &Env{CacheDir: o.CacheDir, Run: o.Run, Force: o.Force}
	}
	if b.env.Progress == nil {
		b.env.Progress = func(format string, a ...any) { b.steps.Printf(format, a...) }
	}

	var t *Target
	err := b.step("inspect", func() error {
		var err error
		t, err = Inspect(o.Root, o.Kernel, running)
		b.res.Target = t
		if t != nil && t.Config != nil {
			b.steps.Printf("kernel %s (running: %v), distribution %q, config %s", t.Release, t.Running, t.Distro, t.ConfigPath)
		}
		return err
	})
	if errors.Is(err, ErrBuiltIn) {
		b.res.Skipped = err.Error()
		b.printf("%s", err)
		return b.res, nil
	}
	if err != nil {
		return b.res, err
	}
	if err := signingReady(t, o); err != nil {
		return b.res, err
	}
	if t.Installed != "" && !o.Force {
		b.res.Skipped = fmt.Sprintf("nbd.ko is already installed for %s at %s", t.Release, t.Installed)
		b.printf("%s; nothing to do (force to rebuild)", b.res.Skipped)
		b.res.Module = t.Installed
		return b.res, nil
	}
	if t.DistroNBD != "" && !o.Force && !o.OverDistro {
		b.res.Skipped = fmt.Sprintf("the distribution ships nbd.ko for %s at %s", t.Release, t.DistroNBD)
		b.printf("%s, which modprobe nbd loads: nothing to build. Force builds nbdlab's own anyway (nbdlab kmod build --force, FORCE=1 go run mage.go buildNbd), "+
			"installed into updates/ where it shadows the distribution's module, and taints the kernel unless signed (--sign-key, --sign-cert)", b.res.Skipped)
		b.res.Module = t.DistroNBD
		return b.res, nil
	}
	if t.DistroNBD != "" {
		b.steps.Printf("the distribution ships %s; building nbdlab's own into updates/, which modprobe prefers", t.DistroNBD)
	}
	prov, err := ProviderFor(t, o.Source)
	if fetched != nil && o.Source == "" {
		prov, err = Fetched{Kernel: *fetched}, nil
	}
	if err != nil {
		return b.res, err
	}
	if o.DryRun {
		return b.res, b.dryRun(t, prov)
	}
	if err := os.MkdirAll(filepath.Join(o.CacheDir, "logs"), 0o755); err != nil {
		return b.res, fmt.Errorf("kmod: %w", err)
	}
	b.log, err = os.Create(filepath.Join(o.CacheDir, "logs", "build-"+t.Release+".log"))
	if err != nil {
		return b.res, fmt.Errorf("kmod: %w", err)
	}
	defer b.log.Close()
	b.res.BuildLog = b.log.Name()

	var src *Source
	if err := b.step("fetch source ("+prov.Name()+")", func() error {
		var err error
		src, err = prov.Fetch(ctx, b.env, t)
		if err == nil {
			b.steps.Printf("source: %s at %s", src.What, src.Dir)
		}
		return err
	}); err != nil {
		return b.res, err
	}
	var ko string
	if err := b.step("build nbd.ko", func() error {
		var err error
		ko, err = b.build(ctx, t, src)
		return err
	}); err != nil {
		return b.res, err
	}
	if err := b.step("verify", func() error { return b.verify(ctx, t, src, ko) }); err != nil {
		return b.res, err
	}
	if err := b.step("install", func() error { return b.install(ctx, t, ko) }); err != nil {
		return b.res, err
	}
	b.printf("nbd.ko for %s installed at %s (%s in all)", t.Release, b.res.Module, time.Since(b.start).Round(100*time.Millisecond))
	return b.res, nil
}

func (b *builder) dryRun(t *Target, prov Provider) error {
	dest := filepath.Join(b.o.Prefix+"/", "lib/modules", t.Release, "updates/nbd.ko")
	steps := []string{
		fmt.Sprintf("fetch the source of %s with the %s provider into %s", t.Release, prov.Name(), b.o.CacheDir),
		fmt.Sprintf("configure a build directory: %s with CONFIG_BLK_DEV_NBD=m, Module.symvers of %s, make olddefconfig modules_prepare KERNELRELEASE=%s", t.ConfigPath, t.Release, t.Release),
		fmt.Sprintf("make M=<nbd only> modules KERNELRELEASE=%s -j%d", t.Release, b.o.Jobs),
		fmt.Sprintf("check vermagic == %q and symbol CRCs against Module.symvers", t.Release),
		fmt.Sprintf("install %s; depmod -a %s", dest, t.Release),
		fmt.Sprintf("write %s unless it exists", filepath.Join(b.o.Prefix+"/", "etc/modprobe.d/nbd.conf")),
	}
	if t.Config["CONFIG_MODULE_SIG_FORCE"] == "y" {
		steps = append(steps[:4], append([]string{"sign nbd.ko with --sign-key and --sign-cert"}, steps[4:]...)...)
	}
	if t.Running && b.o.Prefix == "" {
		steps = append(steps, "modprobe nbd")
	}
	for i, s := range steps {
		b.printf("dry run %d: %s", i+1, s)
	}
	return nil
}

// buildDir returns a cache directory for one (tree, config, symvers)
// combination, so a prepared tree is reused.
func (b *builder) buildDir(t *Target, src *Source) (string, error) {
	h := sha256.New()
	h.Write([]byte(src.Dir + "\x00" + t.Release + "\x00"))
	for _, f := range []string{t.ConfigPath, src.Symvers} {
		if f == "" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		h.Write(data)
	}
	return filepath.Join(b.o.CacheDir, "build", t.Release+"-"+hex.EncodeToString(h.Sum(nil))[:12]), nil
}

func (b *builder) makeArgs(src *Source, build, rel string, extra ...string) []string {
	args := []string{"-C", src.Dir, "O=" + build, "KERNELRELEASE=" + rel, "-j" + strconv.Itoa(b.o.Jobs)}
	return append(args, extra...)
}

// build prepares the build directory (once) and builds nbd.ko alone.
func (b *builder) build(ctx context.Context, t *Target, src *Source) (string, error) {
	build, err := b.buildDir(t, src)
	if err != nil {
		return "", err
	}
	if isComplete(build) {
		b.steps.Printf("reusing prepared build directory %s", build)
	} else {
		os.RemoveAll(build)
		if err := os.MkdirAll(build, 0o755); err != nil {
			return "", err
		}
		cfg := maps.Clone(t.Config)
		cfg["CONFIG_BLK_DEV_NBD"] = "m"
		if err := writeConfig(filepath.Join(build, ".config"), t.ConfigPath, cfg); err != nil {
			return "", err
		}
		if src.Symvers == "" {
			return "", fmt.Errorf("kmod: no Module.symvers for %s; install its headers package (linux-headers-%s or kernel-devel)", t.Release, t.Release)
		}
		if err := copyFile(src.Symvers, filepath.Join(build, "Module.symvers")); err != nil {
			return "", err
		}
		for _, target := range []string{"olddefconfig", "modules_prepare"} {
			start := time.Now()
			if err := b.runLogged(ctx, "", "make", b.makeArgs(src, build, t.Release, target)...); err != nil {
				return "", fmt.Errorf("kmod: make %s for %s: %w", target, t.Release, err)
			}
			b.steps.Printf("make %s: %s", target, time.Since(start).Round(100*time.Millisecond))
		}
		if err := markComplete(build); err != nil {
			return "", err
		}
	}
	ext := filepath.Join(build, "nbdlab-nbd")
	os.RemoveAll(ext)
	if err := os.MkdirAll(ext, 0o755); err != nil {
		return "", err
	}
	if err := copyFile(filepath.Join(src.Dir, "drivers/block/nbd.c"), filepath.Join(ext, "nbd.c")); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(ext, "Kbuild"), []byte("obj-m := nbd.o\n"), 0o644); err != nil {
		return "", err
	}
	start := time.Now()
	if err := b.runLogged(ctx, "", "make", b.makeArgs(src, build, t.Release, "M="+ext, "modules")...); err != nil {
		return "", fmt.Errorf("kmod: build nbd.ko for %s: %w", t.Release, err)
	}
	b.steps.Printf("make M=%s modules: %s", ext, time.Since(start).Round(100*time.Millisecond))
	return filepath.Join(ext, "nbd.ko"), nil
}

// writeConfig writes the original config with the changed values, keeping
// its order and comments.
func writeConfig(dst, orig string, cfg map[string]string) error {
	data, err := os.ReadFile(orig)
	if err != nil {
		return err
	}
	if len(data) > 2 && data[0] == 0x1f {
		// Gzipped (/proc/config.gz): write the parsed values.
		var sb strings.Builder
		for k, v := range cfg {
			if v == "" {
				sb.WriteString("# " + k + " is not set\n")
			} else {
				sb.WriteString(k + "=" + v + "\n")
			}
		}
		return os.WriteFile(dst, []byte(sb.String()), 0o644)
	}
	var out []string
	seen := map[string]bool{}
	for _, l := range strings.Split(string(data), "\n") {
		key := ""
		if k, _, ok := strings.Cut(l, "="); ok && strings.HasPrefix(k, "CONFIG_") {
			key = k
		} else if n, ok := strings.CutPrefix(l, "# "); ok && strings.HasSuffix(n, " is not set") {
			key = strings.TrimSuffix(n, " is not set")
		}
		if key == "CONFIG_BLK_DEV_NBD" {
			l = key + "=" + cfg[key]
		}
		seen[key] = true
		out = append(out, l)
	}
	if !seen["CONFIG_BLK_DEV_NBD"] {
		out = append(out, "CONFIG_BLK_DEV_NBD="+cfg["CONFIG_BLK_DEV_NBD"])
	}
	return os.WriteFile(dst, []byte(strings.Join(out, "\n")), 0o644)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("kmod: %w", err)
	}
	defer in.Close()
	out, err := os.Create(dst + ".tmp")
	if err != nil {
		return fmt.Errorf("kmod: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("kmod: copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(dst+".tmp", dst)
}
