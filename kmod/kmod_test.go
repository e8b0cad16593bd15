package kmod_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/internal/command"
	"github.com/nbdlab/nbdlab/kmod"
)

func TestResolveReleases(t *testing.T) {
	tests := []struct {
		name, rel, version string
		resolve            func(rel, version string) (string, error)
		want               string
	}{
		{"centos 7.0", "3.10.0-123.el7.x86_64", "", rhel, "V/7.0.1406/os/Source/SPackages/kernel-3.10.0-123.el7.src.rpm"},
		{"centos 7.9", "3.10.0-1160.el7.x86_64", "", rhel, "V/7.9.2009/os/Source/SPackages/kernel-3.10.0-1160.el7.src.rpm"},
		{"centos 7.9 update", "3.10.0-1160.105.1.el7.x86_64", "", rhel, "V/7.9.2009/updates/Source/SPackages/kernel-3.10.0-1160.105.1.el7.src.rpm"},
		{"rocky 8.9", "4.18.0-513.5.1.el8_9.x86_64", "", rhel, "R/8.9/BaseOS/source/tree/Packages/k/kernel-4.18.0-513.5.1.el8_9.src.rpm"},
		{"rocky 8.9 GA", "4.18.0-513.el8.x86_64", "", rhel, "R/8.9/BaseOS/source/tree/Packages/k/kernel-4.18.0-513.el8.src.rpm"},
		{"fedora 39", "6.5.6-300.fc39.x86_64", "", fedora, "K/packages/kernel/6.5.6/300.fc39/src/kernel-6.5.6-300.fc39.src.rpm"},
		{"ubuntu jammy", "5.15.0-91-generic", "5.15.0-91.101", ubuntu, "U/pool/main/l/linux/linux-source-5.15.0_5.15.0-91.101_all.deb"},
		{"kernel.org", "6.6.8", "", kernelOrg, "C/pub/linux/kernel/v6.x/linux-6.6.8.tar.xz"},
		{"kernel.org 3.x", "3.10", "", kernelOrg, "C/pub/linux/kernel/v3.x/linux-3.10.tar.xz"},
		{"debian 6.1", "6.1.0-56-amd64", "6.1.192-2", debian, "linux-source-6.1"},
		{"debian 6.12", "6.12.117+deb12-amd64", "6.12.117-1~deb12u1", debian, "linux-source-6.12"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.resolve(tt.rel, tt.version)
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	for _, bad := range []struct {
		rel, version string
		resolve      func(rel, version string) (string, error)
	}{
		{"6.1.0-56-amd64", "", rhel},
		{"3.10.0-1160.el7.x86_64", "", fedora},
		{"5.15.0-91-generic", "5.15.0-92.102", ubuntu},
		{"6.6.8-custom", "", kernelOrg},
	} {
		if got, err := bad.resolve(bad.rel, bad.version); err == nil {
			t.Errorf("%s resolved to %q; want an error", bad.rel, got)
		}
	}
}

func rhel(rel, _ string) (string, error)   { return kmod.RHELURL("V", "R", rel) }
func fedora(rel, _ string) (string, error) { return kmod.FedoraURL("K", rel) }
func ubuntu(rel, v string) (string, error) { return kmod.UbuntuURL("U", rel, v) }
func debian(_, v string) (string, error)   { return kmod.DebianSourcePackage(v) }
func kernelOrg(rel, _ string) (string, error) {
	u, _, err := kmod.KernelOrgURLs("C", rel)
	return u, err
}

func TestDistroOf(t *testing.T) {
	tests := []struct{ id, like, rel, want string }{
		{"debian", "", "6.1.0-56-amd64", "debian"},
		{"", "", "6.12.117+deb12-amd64", "debian"},
		{"ubuntu", "debian", "5.15.0-91-generic", "ubuntu"},
		{"centos", "rhel fedora", "3.10.0-1160.el7.x86_64", "rhel"},
		{"rocky", "rhel centos fedora", "4.18.0-513.5.1.el8_9.x86_64", "rhel"},
		{"fedora", "", "6.5.6-300.fc39.x86_64", "fedora"},
		{"", "", "6.6.8", ""},
	}
	for _, tt := range tests {
		if got := kmod.DistroOf(tt.id, tt.like, tt.rel); got != tt.want {
			t.Errorf("DistroOf(%q, %q, %q) = %q, want %q", tt.id, tt.like, tt.rel, got, tt.want)
		}
	}
}

// fakeRoot makes a system root with a kernel config and modules directory.
func fakeRoot(t *testing.T, rel, config string, files ...string) string {
	root := t.TempDir()
	for p, data := range map[string]string{
		"etc/os-release":                      "ID=debian\nVERSION_ID=\"12\"\n",
		"boot/config-" + rel:                  config,
		"lib/modules/" + rel + "/modules.dep": "",
	} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(data), 0o644)
	}
	for _, f := range files {
		os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(root, f), nil, 0o644)
	}
	return root
}

// refuse is a Runner that fails the test if anything is run.
func refuse(t *testing.T) command.Runner {
	return func(_ context.Context, _ string, _, _ io.Writer, name string, args ...string) error {
		t.Errorf("ran %s %v; want nothing run", name, args)
		return errors.New("refused")
	}
}

// TestRefusals checks each situation in which Build stops before fetching
// anything, and what it says.
func TestRefusals(t *testing.T) {
	const rel = "6.1.0-56-amd64"
	tests := []struct {
		name      string
		config    string
		files     []string
		opts      kmod.Options
		wantErr   string
		wantSkip  string
		wantPrint string
	}{
		{name: "no module support", config: "# CONFIG_MODULES is not set\nCONFIG_BLK_DEV=y\n",
			wantErr: "has no loadable module support (CONFIG_MODULES is not set in"},
		{name: "no module support points to the VMs", config: "# CONFIG_MODULES is not set\n",
			wantErr: "nbdlab vm run --kernel RELEASE -- modprobe nbd"},
		{name: "built in", config: "CONFIG_MODULES=y\nCONFIG_BLK_DEV_NBD=y\n",
			wantSkip: "nbd is built into the kernel", wantPrint: "there is nothing to build"},
		{name: "already installed", config: "CONFIG_MODULES=y\nCONFIG_BLK_DEV_NBD=m\n",
			files:    []string{"lib/modules/" + rel + "/updates/nbd.ko"},
			wantSkip: "nbd.ko is already installed for " + rel, wantPrint: "force to rebuild"},
		{name: "the distribution's own", config: "CONFIG_MODULES=y\nCONFIG_BLK_DEV_NBD=m\n",
			files:    []string{"lib/modules/" + rel + "/kernel/drivers/block/nbd.ko.xz"},
			wantSkip: "the distribution ships nbd.ko for " + rel, wantPrint: "modprobe nbd loads: nothing to build. Force builds"},
		{name: "signatures enforced", config: "CONFIG_MODULES=y\nCONFIG_BLK_DEV_NBD=m\nCONFIG_MODULE_SIG_FORCE=y\n",
			wantErr: "only loads signed modules (CONFIG_MODULE_SIG_FORCE=y): give --sign-key KEY --sign-cert CERT"},
		{name: "no config", config: "",
			wantErr: "no config for kernel " + rel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeRoot(t, rel, tt.config, tt.files...)
			if tt.config == "" {
				os.Remove(filepath.Join(root, "boot/config-"+rel))
			}
			var out bytes.Buffer
			o := tt.opts
			o.Kernel, o.Root, o.Out, o.Run, o.CacheDir = rel, root, &out, refuse(t), t.TempDir()
			res, err := kmod.Build(context.Background(), o)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("error %v, want a skip", err)
			}
			if !strings.Contains(res.Skipped, tt.wantSkip) || !strings.Contains(out.String(), tt.wantPrint) {
				t.Fatalf("skipped %q, printed %q; want %q and %q", res.Skipped, out.String(), tt.wantSkip, tt.wantPrint)
			}
		})
	}
}

func TestNoModulesIsErrNoModules(t *testing.T) {
	root := fakeRoot(t, "x", "# CONFIG_MODULES is not set\n")
	_, err := kmod.Inspect(root, "x", "x")
	if !errors.Is(err, kmod.ErrNoModules) {
		t.Fatalf("got %v, want ErrNoModules", err)
	}
}

// script is a Runner that answers commands from a table and records them.
type script struct {
	t       *testing.T
	answers map[string]string // command line prefix -> stdout; missing: fail
	ran     []string
}

func (s *script) run(_ context.Context, _ string, stdout, _ io.Writer, name string, args ...string) error {
	line := strings.TrimSpace(name + " " + strings.Join(args, " "))
	s.ran = append(s.ran, line)
	for prefix, out := range s.answers {
		if strings.HasPrefix(line, prefix) {
			if stdout != nil {
				io.WriteString(stdout, out)
			}
			return nil
		}
	}
	return fmt.Errorf("%s: exit status 100", line)
}

func TestDebianRefusesOtherSourceVersion(t *testing.T) {
	const rel = "6.1.0-56-amd64"
	root := fakeRoot(t, rel, "CONFIG_MODULES=y\nCONFIG_BLK_DEV_NBD=m\n")
	s := &script{t: t, answers: map[string]string{
		"dpkg-query -W -f ${Version} linux-image-" + rel: "6.1.192-2",
		"apt-cache policy linux-source-6.1":              "linux-source-6.1:\n  Installed: (none)\n  Candidate: 6.1.200-1\n",
		"apt-cache madison linux-source-6.1":             "linux-source-6.1 | 6.1.200-1 | http://deb.example bookworm/main all",
	}}
	var out bytes.Buffer
	_, err := kmod.Build(context.Background(), kmod.Options{Kernel: rel, Root: root, Out: &out, Run: s.run, CacheDir: t.TempDir()})
	want := `linux-source-6.1 6.1.192-2 is not available from apt (available: linux-source-6.1 | 6.1.200-1`
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "refusing a different version") {
		t.Fatalf("error %v, want one saying %q and refusing", err, want)
	}
	for _, l := range s.ran {
		if strings.HasPrefix(l, "apt-get download") {
			t.Fatalf("downloaded despite the mismatch: %q", l)
		}
	}
}

func TestDryRunDoesNothing(t *testing.T) {
	const rel = "6.1.0-56-amd64"
	root := fakeRoot(t, rel, "CONFIG_MODULES=y\nCONFIG_BLK_DEV_NBD=m\n")
	var out bytes.Buffer
	_, err := kmod.Build(context.Background(), kmod.Options{Kernel: rel, Root: root, Out: &out, Run: refuse(t),
		CacheDir: t.TempDir(), DryRun: true, Prefix: "/staging"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"fetch the source of " + rel + " with the debian provider", "KERNELRELEASE=" + rel,
		"install /staging/lib/modules/" + rel + "/updates/nbd.ko", "depmod -a " + rel, "/staging/etc/modprobe.d/nbd.conf"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out.String())
		}
	}
}
