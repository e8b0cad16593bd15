package kmod_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/cpio"
	"github.com/nbdlab/nbdlab/internal/command"
	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/kmod"
)

// treeTarball makes a gzipped tarball of a minimal kernel tree under top/.
func treeTarball(t *testing.T, top, nbdSource string) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, data := range map[string]string{
		top + "/Makefile":               "VERSION = 6\n",
		top + "/drivers/block/nbd.c":    nbdSource,
		top + "/drivers/block/Makefile": "obj-$(CONFIG_BLK_DEV_NBD) += nbd.o\n",
	} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write([]byte(data))
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

type rpmEntry struct {
	tag, typ, count uint32
	data            []byte
}

func rpmHeader(entries []rpmEntry) []byte {
	var index, store bytes.Buffer
	for _, e := range entries {
		if e.typ == 4 {
			for store.Len()%4 != 0 {
				store.WriteByte(0)
			}
		}
		binary.Write(&index, binary.BigEndian, []uint32{e.tag, e.typ, uint32(store.Len()), e.count})
		store.Write(e.data)
	}
	var h bytes.Buffer
	h.Write([]byte{0x8e, 0xad, 0xe8, 0x01, 0, 0, 0, 0})
	binary.Write(&h, binary.BigEndian, []uint32{uint32(len(entries)), uint32(store.Len())})
	h.Write(index.Bytes())
	h.Write(store.Bytes())
	return h.Bytes()
}

// srpm builds a source RPM whose gzip payload holds files. digest picks
// the integrity record: "sha256" (payload digest), "md5" (signature MD5)
// or "bad" (a wrong payload digest).
func srpm(t *testing.T, files map[string][]byte, digest string) []byte {
	var arch []cpio.File
	for name, data := range files {
		arch = append(arch, cpio.File{Name: name, Mode: cpio.ModeRegular | 0o644, Data: data})
	}
	var raw, payload bytes.Buffer
	cpio.Write(&raw, arch)
	zw := gzip.NewWriter(&payload)
	zw.Write(raw.Bytes())
	zw.Close()
	entries := []rpmEntry{{1125, 6, 1, []byte("gzip\x00")}}
	sum := sha256.Sum256(payload.Bytes())
	switch digest {
	case "sha256":
		entries = append(entries, rpmEntry{5092, 8, 1, []byte(hex.EncodeToString(sum[:]) + "\x00")}, rpmEntry{5093, 4, 1, []byte{0, 0, 0, 8}})
	case "bad":
		entries = append(entries, rpmEntry{5092, 8, 1, []byte(strings.Repeat("0", 64) + "\x00")})
	}
	hdr := rpmHeader(entries)
	var sigEntries []rpmEntry
	if digest == "md5" {
		m := md5.New()
		m.Write(hdr)
		m.Write(payload.Bytes())
		sigEntries = append(sigEntries, rpmEntry{1004, 7, 16, m.Sum(nil)})
	}
	sig := rpmHeader(sigEntries)
	var out bytes.Buffer
	lead := make([]byte, 96)
	copy(lead, []byte{0xed, 0xab, 0xee, 0xdb, 3, 0, 0, 1})
	out.Write(lead)
	out.Write(sig)
	for out.Len()%8 != 0 {
		out.WriteByte(0)
	}
	out.Write(hdr)
	out.Write(payload.Bytes())
	return out.Bytes()
}

// serve serves files by path on a local HTTP server.
func serve(t *testing.T, files map[string][]byte) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(data)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func testEnv(t *testing.T, mirrors map[string]string) *kmod.Env {
	return &kmod.Env{CacheDir: t.TempDir(), Run: command.Exec, Mirrors: mirrors, Progress: t.Logf}
}

func checkTree(t *testing.T, src *kmod.Source, wantNbd string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(src.Dir, "drivers/block/nbd.c"))
	if err != nil || string(b) != wantNbd {
		t.Fatalf("tree at %s: nbd.c = %q, %v; want %q", src.Dir, b, err, wantNbd)
	}
}

func TestFetchRHELFromVault(t *testing.T) {
	for _, digest := range []string{"sha256", "md5"} {
		t.Run(digest, func(t *testing.T) {
			rpm := srpm(t, map[string][]byte{
				"linux-3.10.0-1160.el7.tar.gz": treeTarball(t, "linux-3.10.0-1160.el7", "/* el7 nbd */"),
				"kernel.spec":                  []byte("Name: kernel\n"),
			}, digest)
			url := serve(t, map[string][]byte{"/7.9.2009/os/Source/SPackages/kernel-3.10.0-1160.el7.src.rpm": rpm})
			env := testEnv(t, map[string]string{"centos": url})
			src, err := kmod.RHEL{}.Fetch(context.Background(), env, &kmod.Target{Release: "3.10.0-1160.el7.x86_64"})
			if err != nil {
				t.Fatal(err)
			}
			checkTree(t, src, "/* el7 nbd */")
		})
	}
}

func TestFetchRejectsCorruptRPM(t *testing.T) {
	rpm := srpm(t, map[string][]byte{"linux-6.5.6.tar.gz": treeTarball(t, "linux-6.5.6", "x")}, "bad")
	url := serve(t, map[string][]byte{"/packages/kernel/6.5.6/300.fc39/src/kernel-6.5.6-300.fc39.src.rpm": rpm})
	_, err := kmod.Fedora{}.Fetch(context.Background(), testEnv(t, map[string]string{"fedora": url}), &kmod.Target{Release: "6.5.6-300.fc39.x86_64"})
	if err == nil || !strings.Contains(err.Error(), "the file is corrupt") {
		t.Fatalf("got %v, want a payload digest mismatch", err)
	}
}

func TestFetchFedoraAppliesRedHatPatch(t *testing.T) {
	patch := "--- a/drivers/block/nbd.c\n+++ b/drivers/block/nbd.c\n@@ -1 +1 @@\n-/* vanilla */\n+/* fedora */\n"
	rpm := srpm(t, map[string][]byte{
		"linux-6.5.6.tar.gz":          treeTarball(t, "linux-6.5.6", "/* vanilla */\n"),
		"patch-6.5-redhat.patch":      []byte(patch),
		"kernel-x86_64-fedora.config": []byte("CONFIG_MODULES=y\n"),
	}, "sha256")
	url := serve(t, map[string][]byte{"/packages/kernel/6.5.6/300.fc39/src/kernel-6.5.6-300.fc39.src.rpm": rpm})
	src, err := kmod.Fedora{}.Fetch(context.Background(), testEnv(t, map[string]string{"fedora": url}), &kmod.Target{Release: "6.5.6-300.fc39.x86_64"})
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, src, "/* fedora */\n")
}

func TestFetchVanillaChecksSHA256(t *testing.T) {
	tarball := treeTarball(t, "linux-6.6.8", "/* 6.6.8 */")
	sum := sha256.Sum256(tarball)
	good := fmt.Sprintf("-----BEGIN PGP SIGNED MESSAGE-----\n\n%x  linux-6.6.8.tar.xz\n%s  linux-6.6.7.tar.xz\n", sum, strings.Repeat("a", 64))
	for _, tt := range []struct {
		name, sums, wantErr string
	}{
		{"good", good, ""},
		{"mismatch", strings.Replace(good, hex.EncodeToString(sum[:]), strings.Repeat("b", 64), 1), "sha256"},
		{"unlisted", strings.Replace(good, "linux-6.6.8.tar.xz", "linux-6.6.9.tar.xz", 1), "lists no sha256 for linux-6.6.8.tar.xz"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			url := serve(t, map[string][]byte{
				"/pub/linux/kernel/v6.x/linux-6.6.8.tar.xz": tarball, // tar detects gzip by content
				"/pub/linux/kernel/v6.x/sha256sums.asc":     []byte(tt.sums),
			})
			src, err := kmod.KernelOrg{}.Fetch(context.Background(), testEnv(t, map[string]string{"kernel.org": url}), &kmod.Target{Release: "6.6.8"})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error about %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkTree(t, src, "/* 6.6.8 */")
		})
	}
}

func TestFetchUbuntuFromPool(t *testing.T) {
	testenv.Need(t, "dpkg-deb", "tar")
	// Build a linux-source .deb as Ubuntu lays it out.
	pkg := t.TempDir()
	os.MkdirAll(filepath.Join(pkg, "DEBIAN"), 0o755)
	os.WriteFile(filepath.Join(pkg, "DEBIAN/control"), []byte("Package: linux-source-5.15.0\nVersion: 5.15.0-91.101\nArchitecture: all\nMaintainer: test <t@example.org>\nDescription: test\n"), 0o644)
	srcDir := filepath.Join(pkg, "usr/src/linux-source-5.15.0")
	os.MkdirAll(srcDir, 0o755)
	os.WriteFile(filepath.Join(srcDir, "linux-source-5.15.0.tar.gz"), treeTarball(t, "linux-source-5.15.0", "/* jammy */"), 0o644)
	deb := filepath.Join(t.TempDir(), "p.deb")
	if out, err := exec.Command("dpkg-deb", "--build", "--root-owner-group", pkg, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v\n%s", err, out)
	}
	data, _ := os.ReadFile(deb)
	url := serve(t, map[string][]byte{"/pool/main/l/linux/linux-source-5.15.0_5.15.0-91.101_all.deb": data})
	env := testEnv(t, map[string]string{"ubuntu": url})
	env.Run = func(ctx context.Context, dir string, stdout, stderr io.Writer, name string, args ...string) error {
		if name == "dpkg-query" {
			io.WriteString(stdout, "5.15.0-91.101")
			return nil
		}
		return command.Exec(ctx, dir, stdout, stderr, name, args...)
	}
	src, err := kmod.Ubuntu{}.Fetch(context.Background(), env, &kmod.Target{Release: "5.15.0-91-generic"})
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, src, "/* jammy */")
}

func TestLocalTree(t *testing.T) {
	if _, err := (kmod.LocalTree{Dir: t.TempDir()}).Fetch(context.Background(), nil, nil); err == nil ||
		!strings.Contains(err.Error(), "is not a kernel source tree") {
		t.Fatalf("empty directory accepted as a tree: %v", err)
	}
}
