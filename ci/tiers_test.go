package ci

import (
	"go/build/constraint"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

func TestTierArgs(t *testing.T) {
	for _, tc := range []struct {
		tier Tier
		want string
	}{
		{Unit, "test -count=1 -timeout=10m0s ./..."},
		{VM, "test -count=1 -timeout=1h20m0s -tags=vm ./..."},
	} {
		if got := strings.Join(tc.tier.Args(), " "); got != tc.want {
			t.Errorf("%s: go %s, want go %s", tc.tier.Name, got, tc.want)
		}
	}
}

// needsVMTier says why a test file belongs in the vm tier: it boots VMs
// through vmtest, or it checks for root.
func needsVMTier(src string) string {
	switch {
	case strings.Contains(src, `"github.com/nbdlab/nbdlab/vm/vmtest"`):
		return "imports vm/vmtest"
	case strings.Contains(src, "os.Geteuid()"), strings.Contains(src, "os.Getuid()"):
		return "checks for root"
	}
	return ""
}

// vmTagged reports whether the file builds only with the vm tag.
func vmTagged(path, src string) (bool, error) {
	f, err := parser.ParseFile(token.NewFileSet(), path, src, parser.PackageClauseOnly|parser.ParseComments)
	if err != nil {
		return false, err
	}
	for _, g := range f.Comments {
		for _, c := range g.List {
			if !constraint.IsGoBuild(c.Text) {
				continue
			}
			expr, err := constraint.Parse(c.Text)
			if err != nil {
				return false, err
			}
			return !expr.Eval(func(tag string) bool { return tag != "vm" }), nil
		}
	}
	return false, nil
}

func TestVMTier(t *testing.T) {
	cases := []struct {
		src  string
		want bool
	}{
		{"//go:build vm\n\npackage x\n", true},
		{"//go:build linux && vm\n\npackage x\n", true},
		{"//go:build linux || vm\n\npackage x\n", false},
		{"//go:build linux\n\npackage x\n", false},
		{"package x\n", false},
	}
	for _, c := range cases {
		if got, err := vmTagged("x_test.go", c.src); err != nil || got != c.want {
			t.Errorf("vmTagged(%q) = %v, %v; want %v", c.src, got, err, c.want)
		}
	}
}

// TestTiersAreHonest: a test file that boots VMs or needs root builds only
// with the vm tag, so that the unit tier needs neither.
func TestTiersAreHonest(t *testing.T) {
	var checked []string
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") && path != ".." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") || filepath.Base(path) == "tiers_test.go" {
			return nil
		}
		b, err := readFile(path)
		if err != nil {
			return err
		}
		why := needsVMTier(b)
		if why == "" {
			return nil
		}
		checked = append(checked, path)
		ok, err := vmTagged(path, b)
		if err != nil {
			return err
		}
		if !ok {
			t.Errorf("%s %s but builds without the vm tag: add //go:build vm", path, why)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(checked, filepath.Join("..", "vm", "vm_test.go")) {
		t.Errorf("vm/vm_test.go was not recognised as a VM test (checked %v)", checked)
	}
}
