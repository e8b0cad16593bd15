package kernels_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/kernels"
)

func TestCompareReleases(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"6.12.117+deb12-amd64", "6.1.0-56-amd64", 1},
		{"6.1.0-56-amd64", "6.1.0-9-amd64", 1},
		{"6.1.0-9-amd64", "6.1.0-56-amd64", -1},
		{"7.2.13+deb14-amd64", "6.17.8+deb13-amd64", 1},
		{"5.15.0-91-generic", "5.15.0-91-generic", 0},
	} {
		got := kernels.CompareReleases(tt.a, tt.b)
		if (got > 0) != (tt.want > 0) || (got < 0) != (tt.want < 0) {
			t.Errorf("CompareReleases(%q, %q) = %d, want sign %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func touch(t *testing.T, root string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestInstalledLayouts finds kernels in both of Debian's layouts and
// leaves out one without modules.dep.
func TestInstalledLayouts(t *testing.T) {
	root := t.TempDir()
	touch(t, root,
		"boot/vmlinuz-6.1.0-56-amd64", "boot/config-6.1.0-56-amd64", "lib/modules/6.1.0-56-amd64/modules.dep",
		"usr/lib/modules/7.2.13+deb14-amd64/vmlinuz", "usr/lib/modules/7.2.13+deb14-amd64/config",
		"usr/lib/modules/7.2.13+deb14-amd64/modules.dep",
		"usr/src/linux-headers-7.2.13+deb14-amd64/Module.symvers",
		"boot/vmlinuz-6.12.1-amd64") // no modules: left out
	ks, err := kernels.Installed(root)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, k := range ks {
		got = append(got, k.Release+" "+strings.TrimPrefix(k.Image, root)+" "+strings.TrimPrefix(k.Config, root)+" "+strings.TrimPrefix(k.Symvers, root))
	}
	want := []string{
		"7.2.13+deb14-amd64 /usr/lib/modules/7.2.13+deb14-amd64/vmlinuz /usr/lib/modules/7.2.13+deb14-amd64/config /usr/src/linux-headers-7.2.13+deb14-amd64/Module.symvers",
		"6.1.0-56-amd64 /boot/vmlinuz-6.1.0-56-amd64 /boot/config-6.1.0-56-amd64 ",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Installed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestParseSpec(t *testing.T) {
	for _, tt := range []struct {
		in, suite, rel, err string
	}{
		{"debian:sid", "sid", "", ""},
		{"debian:bookworm/6.1.0-56-amd64", "bookworm", "6.1.0-56-amd64", ""},
		{"sid", "", "", "is not debian:SUITE"},
		{"debian:", "", "", "bad suite"},
		{"debian:sid/a/b", "", "", "bad suite"},
	} {
		sp, err := kernels.ParseSpec(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseSpec(%q) = %v, want error %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || sp.Suite != tt.suite || sp.Release != tt.rel || sp.String() != tt.in {
			t.Errorf("ParseSpec(%q) = %+v, %v", tt.in, sp, err)
		}
	}
}

func TestFindUnknown(t *testing.T) {
	store := kernels.Store{Dir: t.TempDir()}
	for spec, want := range map[string]string{
		"9.9.9-nope":           "is neither installed nor fetched",
		"debian:sid":           "no kernel fetched from debian:sid yet; fetch it with: nbdlab kernel fetch debian:sid",
		"/nonexistent/bzImage": "needs a modules directory",
	} {
		if _, err := kernels.Find(spec, "", store); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Find(%q) = %v, want an error saying %q", spec, err, want)
		}
	}
}
