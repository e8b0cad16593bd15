package kernels

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/debian"
	"github.com/nbdlab/nbdlab/internal/command"
)

// FetchOptions configure Fetch. The zero value fetches from Debian's
// archive into the default store.
type FetchOptions struct {
	Store   Store
	Archive *debian.Archive // default Debian's archive, indexes cached in the store
	// Force fetches a kernel whose headers or source the suite no longer
	// lists (it moved on), without them: it can boot, but nbd.ko cannot be
	// built for it.
	Force    bool
	Progress func(format string, args ...any)
	Run      command.Runner // runs depmod; default command.Exec
}

// Spec is a kernel named by where it comes from: debian:SUITE[/RELEASE].
type Spec struct {
	Suite, Release string
}

func (s Spec) String() string {
	if s.Release == "" {
		return "debian:" + s.Suite
	}
	return "debian:" + s.Suite + "/" + s.Release
}

// ParseSpec reads debian:SUITE or debian:SUITE/RELEASE.
func ParseSpec(s string) (Spec, error) {
	rest, ok := strings.CutPrefix(s, "debian:")
	if !ok {
		return Spec{}, fmt.Errorf("kernels: %q is not debian:SUITE[/RELEASE] (like debian:sid, debian:trixie-backports, debian:bookworm/6.1.0-56-amd64)", s)
	}
	suite, rel, _ := strings.Cut(rest, "/")
	if suite == "" || strings.ContainsAny(suite, " /") || strings.ContainsAny(rel, " /") {
		return Spec{}, fmt.Errorf("kernels: %q: bad suite or release", s)
	}
	return Spec{Suite: suite, Release: rel}, nil
}

// IsSpec reports whether s names a kernel by suite rather than by release.
func IsSpec(s string) bool { return strings.HasPrefix(s, "debian:") }

func (o *FetchOptions) defaults() {
	if o.Progress == nil {
		o.Progress = func(string, ...any) {}
	}
	if o.Archive == nil {
		o.Archive = &debian.Archive{}
	}
	if o.Archive.CacheDir == "" {
		o.Archive.CacheDir = o.Store.dir()
	}
	if o.Archive.Progress == nil {
		o.Archive.Progress = o.Progress
	}
	if o.Run == nil {
		o.Run = command.Exec
	}
}

// Fetch brings the kernel spec names into the store, checked at every step
// against the suite's signed indexes, and returns it. A kernel already
// fetched whole is returned as it is.
func Fetch(ctx context.Context, spec string, o FetchOptions) (Kernel, error) {
	o.defaults()
	sp, err := ParseSpec(spec)
	if err != nil {
		return Kernel{}, err
	}
	rel, err := o.Archive.Release(ctx, sp.Suite)
	if err != nil {
		return Kernel{}, err
	}
	o.Progress("%s: Release of %s signed by %s", sp, rel.Date.Format("2006-01-02"), rel.Signer)
	ix, err := o.Archive.Packages(ctx, rel, "main", "amd64", "linux-")
	if err != nil {
		return Kernel{}, err
	}
	kver := sp.Release
	if kver == "" {
		if kver, err = newestRelease(ix); err != nil {
			return Kernel{}, fmt.Errorf("kernels: %s: %w", sp, err)
		}
		o.Progress("%s: newest amd64 kernel is %s", sp, kver)
	}
	if k, ok := o.Store.Get(kver); ok {
		o.Progress("%s already fetched into %s", kver, o.Store.KernelDir(kver))
		return k, nil
	}
	plan, err := planFetch(ix, sp, kver, o.Force, o.Progress)
	if err != nil {
		return Kernel{}, err
	}
	dir := o.Store.KernelDir(kver)
	debs := map[string]string{}
	var total int64
	for _, p := range plan.all() {
		total += p.Size
	}
	o.Progress("%s: %d packages, %s to download at most", kver, len(plan.all()), debian.Size(total))
	for _, p := range plan.all() {
		path, err := o.Archive.Download(ctx, p, filepath.Join(dir, "debs"))
		if err != nil {
			return Kernel{}, err
		}
		debs[p.Name] = path
	}
	root := filepath.Join(dir, "root")
	os.RemoveAll(root)
	for _, p := range plan.unpacked() {
		start := time.Now()
		if err := o.Archive.Unpack(ctx, debs[p.Name], root); err != nil {
			return Kernel{}, err
		}
		o.Progress("unpacked %s (%s) in %s", p.Name, debian.Size(p.Size), time.Since(start).Round(100*time.Millisecond))
	}
	k, err := describe(root, kver)
	if err != nil {
		return Kernel{}, fmt.Errorf("%w: the packages of %s did not bring a kernel", err, sp)
	}
	if err := depmod(ctx, o.Run, root, k); err != nil {
		return Kernel{}, err
	}
	m := manifest{Release: kver, Origin: "debian:" + sp.Suite, Mirror: strings.TrimRight(o.Archive.Mirror, "/"),
		Version: plan.image.Version, Fetched: time.Now().UTC(), Missing: plan.missing}
	if m.Mirror == "" {
		m.Mirror = debian.DefaultMirror
	}
	for _, p := range plan.all() {
		m.Packages = append(m.Packages, debRecord{Name: p.Name, Version: p.Version, SHA256: p.SHA256, Size: p.Size})
	}
	if plan.source != nil {
		m.SourceDeb, _ = filepath.Rel(dir, debs[plan.source.Name])
	}
	if err := o.Store.writeManifest(m); err != nil {
		return Kernel{}, err
	}
	k, _ = o.Store.Get(kver)
	o.Progress("fetched %s (%s %s) into %s, %s on disk", kver, m.Origin, m.Version, dir, debian.Size(DiskUsage(dir)))
	return k, nil
}

// newestRelease reads the release the suite's linux-image-amd64
// metapackage points at.
func newestRelease(ix *debian.Index) (string, error) {
	meta, ok := ix.Find("linux-image-amd64", "")
	if !ok {
		return "", fmt.Errorf("no linux-image-amd64 in the index")
	}
	for _, alts := range meta.Depends {
		for _, d := range alts {
			if r, ok := strings.CutPrefix(d.Name, "linux-image-"); ok && r != "amd64" {
				return strings.TrimSuffix(r, "-unsigned"), nil
			}
		}
	}
	return "", fmt.Errorf("linux-image-amd64 %s depends on no linux-image-RELEASE", meta.Version)
}

// fetchPlan is the packages one kernel needs.
type fetchPlan struct {
	image   debian.Package
	parts   []debian.Package // the split image's binary, base and modules packages
	headers *debian.Package
	source  *debian.Package
	missing []string
}

func (p *fetchPlan) unpacked() []debian.Package {
	out := append([]debian.Package{p.image}, p.parts...)
	if p.headers != nil {
		out = append(out, *p.headers)
	}
	return out
}

func (p *fetchPlan) all() []debian.Package {
	out := p.unpacked()
	if p.source != nil {
		out = append(out, *p.source)
	}
	return out
}

var majorMinor = regexp.MustCompile(`^(?:\d+:)?(\d+\.\d+)`)

// planFetch picks the packages of kver from the index.
func planFetch(ix *debian.Index, sp Spec, kver string, force bool, progress func(string, ...any)) (*fetchPlan, error) {
	plan := &fetchPlan{}
	var ok bool
	for _, name := range []string{"linux-image-" + kver, "linux-image-" + kver + "-unsigned"} {
		if plan.image, ok = ix.Find(name, ""); ok {
			break
		}
	}
	if !ok {
		return nil, fmt.Errorf("kernels: %s does not list linux-image-%s (%w); it lists: %s",
			sp, kver, debian.ErrNotListed, strings.Join(listed(ix), ", "))
	}
	// Newer Debian splits the image: its dependencies named for the
	// release carry the files.
	for _, alts := range plan.image.Depends {
		for _, d := range alts {
			if !strings.HasSuffix(d.Name, "-"+kver) || !strings.HasPrefix(d.Name, "linux-") {
				continue
			}
			p, ok := ix.Find(d.Name, d.Version)
			if !ok {
				return nil, fmt.Errorf("kernels: %s: %s depends on %s %s, which the index does not list", sp, plan.image.Name, d.Name, d.Version)
			}
			plan.parts = append(plan.parts, p)
		}
	}
	ver := plan.image.Version
	m := majorMinor.FindStringSubmatch(ver)
	if m == nil {
		return nil, fmt.Errorf("kernels: %s: cannot read X.Y from version %q", plan.image.Name, ver)
	}
	for _, want := range []struct {
		name string
		dst  **debian.Package
	}{{"linux-headers-" + kver, &plan.headers}, {"linux-source-" + m[1], &plan.source}} {
		p, ok := ix.Find(want.name, ver)
		if ok {
			*want.dst = &p
			continue
		}
		what := fmt.Sprintf("%s %s", want.name, ver)
		if other, ok := ix.Find(want.name, ""); ok {
			what += fmt.Sprintf(" (it lists %s)", other.Version)
		}
		if !force {
			return nil, fmt.Errorf("kernels: %s no longer lists %s, which building nbd.ko for %s needs (the suite moved on); fetch the suite's newest kernel (%s), or force to fetch the kernel without it",
				sp, what, kver, "debian:"+sp.Suite)
		}
		progress("WARNING: %s does not list %s; fetching %s without it (forced): nbd.ko cannot be built for it", sp, what, kver)
		plan.missing = append(plan.missing, want.name)
	}
	return plan, nil
}

// listed names the releases of the linux-image-R packages an index lists.
func listed(ix *debian.Index) []string {
	var out []string
	for _, n := range ix.Names("linux-image-") {
		r := strings.TrimPrefix(n, "linux-image-")
		if strings.HasSuffix(r, "-amd64") && !strings.HasSuffix(r, "-dbg") && r != "amd64" && strings.ContainsAny(r, "0123456789") {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return CompareReleases(out[i], out[j]) > 0 })
	if len(out) == 0 {
		return []string{"none"}
	}
	return out
}

// depmod writes modules.dep for k inside its own root: the .debs ship
// none. depmod reads BASE/lib/modules, so a tree with only the newer
// /usr/lib/modules gets a lib link to usr/lib.
func depmod(ctx context.Context, run command.Runner, root string, k Kernel) error {
	if _, err := os.Lstat(filepath.Join(root, "lib")); errors.Is(err, os.ErrNotExist) {
		if err := os.Symlink("usr/lib", filepath.Join(root, "lib")); err != nil {
			return fmt.Errorf("kernels: %w", err)
		}
	}
	args := []string{"-b", root}
	if sm := firstExisting(filepath.Join(root, "boot", "System.map-"+k.Release), filepath.Join(k.Modules, "System.map")); sm != "" {
		args = append(args, "-F", sm)
	}
	if err := run(ctx, "", nil, nil, "depmod", append(args, k.Release)...); err != nil {
		return fmt.Errorf("kernels: depmod for %s in %s: %w", k.Release, root, err)
	}
	if _, err := os.Stat(filepath.Join(k.Modules, "modules.dep")); err != nil {
		return fmt.Errorf("kernels: depmod wrote no modules.dep for %s: %w", k.Release, err)
	}
	return nil
}
