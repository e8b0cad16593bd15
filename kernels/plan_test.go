package kernels

import (
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/debian"
)

func pkg(name, version, depends string) debian.Package {
	return debian.Package{Name: name, Version: version, Depends: debian.ParseDepends(depends), Filename: "pool/" + name + ".deb"}
}

func index(ps ...debian.Package) *debian.Index {
	ix := &debian.Index{Suite: "test", Packages: map[string][]debian.Package{}}
	for _, p := range ps {
		ix.Packages[p.Name] = append(ix.Packages[p.Name], p)
	}
	return ix
}

// TestPlanFetch picks the packages of both of Debian's image layouts and
// refuses, unless forced, a kernel whose source the suite no longer lists.
func TestPlanFetch(t *testing.T) {
	const split = "7.2.13+deb14-amd64"
	const whole = "6.1.0-56-amd64"
	ix := index(
		pkg("linux-image-amd64", "7.2.13-1", "linux-base-amd64 (= 7.2.13-1), linux-image-"+split+" (= 7.2.13-1)"),
		pkg("linux-image-"+split, "7.2.13-1", "dracut | initramfs-tools, linux-base-"+split+" (= 7.2.13-1), linux-binary-"+split+" (= 7.2.13-1), linux-modules-"+split+" (= 7.2.13-1)"),
		pkg("linux-base-"+split, "7.2.13-1", ""),
		pkg("linux-binary-"+split, "7.2.13-1", "linux-base-"+split+" (= 7.2.13-1)"),
		pkg("linux-modules-"+split, "7.2.13-1", "kmod"),
		pkg("linux-headers-"+split, "7.2.13-1", ""),
		pkg("linux-source-7.2", "7.2.13-1", ""),
		pkg("linux-image-"+whole, "6.1.192-2", "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool"),
		pkg("linux-headers-"+whole, "6.1.192-2", ""),
		pkg("linux-source-6.1", "6.1.200-1", ""), // the suite moved on
	)
	newest, err := newestRelease(ix)
	if err != nil || newest != split {
		t.Fatalf("newestRelease = %q, %v; want %s", newest, err, split)
	}
	names := func(ps []debian.Package) string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name)
		}
		return strings.Join(out, " ")
	}
	nop := func(string, ...any) {}
	plan, err := planFetch(ix, Spec{Suite: "test"}, split, false, nop)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(plan.all()), "linux-image-"+split+" linux-base-"+split+" linux-binary-"+split+" linux-modules-"+split+" linux-headers-"+split+" linux-source-7.2"; got != want {
		t.Errorf("split image: plan %s\nwant %s", got, want)
	}
	if got := names(plan.unpacked()); strings.Contains(got, "linux-source") {
		t.Errorf("the source is unpacked with the kernel: %s", got)
	}

	_, err = planFetch(ix, Spec{Suite: "test"}, whole, false, nop)
	if err == nil || !strings.Contains(err.Error(), "no longer lists linux-source-6.1 6.1.192-2 (it lists 6.1.200-1)") {
		t.Fatalf("moved-on source: err = %v", err)
	}
	plan, err = planFetch(ix, Spec{Suite: "test"}, whole, true, nop)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(plan.all()), "linux-image-"+whole+" linux-headers-"+whole; got != want || len(plan.missing) != 1 {
		t.Errorf("forced whole image: plan %s, missing %v; want %s without the source", got, plan.missing, want)
	}

	_, err = planFetch(ix, Spec{Suite: "test"}, "9.9.9-amd64", false, nop)
	if err == nil || !strings.Contains(err.Error(), "it lists: "+split+", "+whole) {
		t.Fatalf("unknown release: err = %v", err)
	}
}
