package debian_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/debian"
	"github.com/nbdlab/nbdlab/internal/testenv"
)

func TestCompareVersions(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"1.0", "1.0", 0},
		{"1.0", "1.1", -1},
		{"1.0~rc1", "1.0", -1},
		{"1.0", "1.0+b1", -1},
		{"6.12.117-1~deb12u1", "6.12.117-1", -1},
		{"6.1.192-2", "6.1.99-1", 1},
		{"1:0.9", "2.0", 1},
		{"7.2.13-1", "7.2.13-1", 0},
		{"1.0-10", "1.0-9", 1},
		{"1.0a", "1.0+", -1},
		{"1.0", "1.0-0", 0},
	} {
		if got := debian.CompareVersions(tt.a, tt.b); got != tt.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := debian.CompareVersions(tt.b, tt.a); got != -tt.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tt.b, tt.a, got, -tt.want)
		}
	}
}

func TestParseDepends(t *testing.T) {
	got := debian.ParseDepends("dracut | initramfs-tools (>= 0.120+deb8u2), linux-base-7.2.13+deb14-amd64 (= 7.2.13-1), python3:any")
	want := [][]debian.Dep{
		{{Name: "dracut"}, {Name: "initramfs-tools", Rel: ">=", Version: "0.120+deb8u2"}},
		{{Name: "linux-base-7.2.13+deb14-amd64", Rel: "=", Version: "7.2.13-1"}},
		{{Name: "python3"}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ParseDepends = %v, want %v", got, want)
	}
}

func TestParseStanzasErrors(t *testing.T) {
	for _, in := range []string{" continuation first\n", "Package: a\nno colon here\n"} {
		err := debian.ParseStanzas(strings.NewReader(in), func(debian.Stanza) error { return nil })
		if err == nil {
			t.Errorf("ParseStanzas(%q) = nil, want an error", in)
		}
	}
}

// fixture is a one-suite archive signed with a key of its own, served
// over HTTP on loopback.
type fixture struct {
	dir, keyring string
	srv          *httptest.Server
	deb          []byte
	mu           sync.Mutex
	served       map[string]int // path -> requests
	failAfter    int64          // cut a pool download after this many bytes, once
}

// noise is n bytes no compressor shrinks.
func noise(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// newFixture builds dists/test with a Packages.gz listing one real .deb
// and a clearsigned InRelease; edit may change the Packages text and the
// InRelease before they are signed and published.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	testenv.Need(t, "gpg", "gpgv", "dpkg-deb")
	f := &fixture{dir: t.TempDir(), served: map[string]int{}}
	home := t.TempDir()
	gpg := func(args ...string) {
		t.Helper()
		cmd := exec.Command("gpg", append([]string{"--homedir", home, "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("gpg %v: %v\n%s", args, err, out)
		}
	}
	gpg("--quick-gen-key", "nbdlab test archive <test@example.org>", "ed25519", "sign", "never")
	f.keyring = filepath.Join(f.dir, "keyring.gpg")
	gpg("--output", f.keyring, "--export", "test@example.org")

	// A real .deb made by dpkg-deb.
	pkgdir := filepath.Join(t.TempDir(), "pkg")
	os.MkdirAll(filepath.Join(pkgdir, "DEBIAN"), 0o755)
	os.MkdirAll(filepath.Join(pkgdir, "usr/lib/modules/9.9.9-test"), 0o755)
	os.WriteFile(filepath.Join(pkgdir, "DEBIAN/control"), []byte("Package: linux-test\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: nobody <nobody@example.org>\nDescription: test\n"), 0o644)
	os.WriteFile(filepath.Join(pkgdir, "usr/lib/modules/9.9.9-test/hello"), noise(300<<10), 0o644)
	deb := filepath.Join(f.dir, "pool/main/l/linux-test/linux-test_1.0-1_amd64.deb")
	os.MkdirAll(filepath.Dir(deb), 0o755)
	if out, err := exec.Command("dpkg-deb", "-Zgzip", "--build", pkgdir, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v\n%s", err, out)
	}
	f.deb, _ = os.ReadFile(deb)
	packages := fmt.Sprintf("Package: linux-test\nVersion: 1.0-1\nArchitecture: amd64\nFilename: pool/main/l/linux-test/linux-test_1.0-1_amd64.deb\nSize: %d\nSHA256: %s\nDepends: linux-base-test (= 1.0-1)\n\nPackage: linux-test\nVersion: 0.9-1\nArchitecture: amd64\nFilename: pool/main/l/linux-test/linux-test_0.9-1_amd64.deb\nSize: 1\nSHA256: %s\n",
		len(f.deb), sum(f.deb), strings.Repeat("0", 64))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(packages))
	zw.Close()
	idx := filepath.Join(f.dir, "dists/test/main/binary-amd64/Packages.gz")
	os.MkdirAll(filepath.Dir(idx), 0o755)
	os.WriteFile(idx, gz.Bytes(), 0o644)
	release := fmt.Sprintf("Suite: test\nCodename: test\nDate: Thu, 26 Nov 2026 08:00:00 UTC\nValid-Until: Thu, 03 Dec 2026 08:00:00 UTC\nSHA256:\n %s %d main/binary-amd64/Packages.gz\n",
		sum(gz.Bytes()), gz.Len())
	plain := filepath.Join(f.dir, "Release")
	os.WriteFile(plain, []byte(release), 0o644)
	gpg("--local-user", "test@example.org", "--output", filepath.Join(f.dir, "dists/test/InRelease"), "--clearsign", plain)

	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.served[r.URL.Path]++
		cut := f.failAfter
		f.failAfter = 0
		f.mu.Unlock()
		if cut > 0 && strings.HasPrefix(r.URL.Path, "/pool/") {
			b, _ := os.ReadFile(filepath.Join(f.dir, r.URL.Path))
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.Write(b[:cut])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		http.FileServer(http.Dir(f.dir)).ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) archive(t *testing.T) *debian.Archive {
	return &debian.Archive{Mirror: f.srv.URL, Keyring: f.keyring, CacheDir: t.TempDir(), Progress: t.Logf,
		Now: func() time.Time { return time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC) }}
}

func (f *fixture) edit(t *testing.T, path string, fn func([]byte) []byte) {
	t.Helper()
	p := filepath.Join(f.dir, path)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, fn(b), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestArchiveFetchesAndVerifies(t *testing.T) {
	f := newFixture(t)
	a := f.archive(t)
	ctx := context.Background()
	r, err := a.Release(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	if r.Suite != "test" || !strings.Contains(r.Signer, "nbdlab test archive") {
		t.Errorf("Release: suite %q signer %q", r.Suite, r.Signer)
	}
	ix, err := a.Packages(ctx, r, "main", "amd64", "linux-")
	if err != nil {
		t.Fatal(err)
	}
	p, ok := ix.Find("linux-test", "")
	if !ok || p.Version != "1.0-1" || p.Depends[0][0].Name != "linux-base-test" {
		t.Fatalf("Find(linux-test) = %+v, %v; want the newer 1.0-1", p, ok)
	}
	dir := t.TempDir()
	deb, err := a.Download(ctx, p, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(deb); !bytes.Equal(got, f.deb) {
		t.Fatal("downloaded .deb differs from the served one")
	}
	root := t.TempDir()
	if err := a.Unpack(ctx, deb, root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "usr/lib/modules/9.9.9-test/hello")); err != nil {
		t.Errorf("unpacked tree: %v", err)
	}
	// A second download is served from the file already there.
	before := f.served["/"+p.Filename]
	if _, err := a.Download(ctx, p, dir); err != nil {
		t.Fatal(err)
	}
	if f.served["/"+p.Filename] != before {
		t.Error("a verified .deb already downloaded was fetched again")
	}
}

func TestArchiveResumesDownload(t *testing.T) {
	f := newFixture(t)
	a := f.archive(t)
	ctx := context.Background()
	r, _ := a.Release(ctx, "test")
	ix, err := a.Packages(ctx, r, "main", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	p, _ := ix.Find("linux-test", "1.0-1")
	cut := int64(len(f.deb) / 2)
	f.failAfter = cut
	dir := t.TempDir()
	if _, err := a.Download(ctx, p, dir); err == nil {
		t.Fatal("a download cut in the middle succeeded")
	}
	part, err := os.Stat(filepath.Join(dir, filepath.Base(p.Filename)+".part"))
	if err != nil || part.Size() != cut {
		t.Fatalf("partial file: %v, size %d, want %d", err, part.Size(), cut)
	}
	deb, err := a.Download(ctx, p, dir)
	if err != nil {
		t.Fatalf("resumed download: %v", err)
	}
	if got, _ := os.ReadFile(deb); !bytes.Equal(got, f.deb) {
		t.Fatal("resumed .deb differs from the served one")
	}
}

func TestArchiveRefusesTampering(t *testing.T) {
	for _, tt := range []struct {
		name   string
		path   string
		tamper func([]byte) []byte
		want   string
	}{
		{"signed text of InRelease", "dists/test/InRelease", func(b []byte) []byte {
			return bytes.Replace(b, []byte("Codename: test"), []byte("Codename: tost"), 1)
		}, "signature check failed"},
		{"InRelease unsigned", "dists/test/InRelease", func(b []byte) []byte {
			s := string(b)
			body := s[strings.Index(s, "\n\n")+2 : strings.Index(s, "-----BEGIN PGP SIGNATURE")]
			return []byte(body)
		}, "no good signature"},
		{"Packages index", "dists/test/main/binary-amd64/Packages.gz", func(b []byte) []byte {
			return append(b[:len(b):len(b)], 0)
		}, "refusing it"},
		{"a .deb in the pool", "pool/main/l/linux-test/linux-test_1.0-1_amd64.deb", func(b []byte) []byte {
			c := bytes.Clone(b)
			c[len(c)-10] ^= 1
			return c
		}, "the download was discarded"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.edit(t, tt.path, tt.tamper)
			a := f.archive(t)
			ctx := context.Background()
			dir := t.TempDir()
			err := func() error {
				r, err := a.Release(ctx, "test")
				if err != nil {
					return err
				}
				ix, err := a.Packages(ctx, r, "main", "amd64")
				if err != nil {
					return err
				}
				p, _ := ix.Find("linux-test", "1.0-1")
				_, err = a.Download(ctx, p, dir)
				return err
			}()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("tampered %s: err = %v, want one saying %q", tt.path, err, tt.want)
			}
			if debs, _ := filepath.Glob(filepath.Join(dir, "*.deb")); len(debs) > 0 {
				t.Errorf("a tampered download was kept: %v", debs)
			}
		})
	}
}

func TestArchiveWarnsOfExpiredRelease(t *testing.T) {
	f := newFixture(t)
	a := f.archive(t)
	var warned []string
	a.Progress = func(format string, args ...any) { warned = append(warned, fmt.Sprintf(format, args...)) }
	a.Now = func() time.Time { return time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC) }
	if _, err := a.Release(context.Background(), "test"); err != nil {
		t.Fatal(err)
	}
	if len(warned) == 0 || !strings.Contains(warned[0], "expired on 2026-12-03") {
		t.Errorf("no warning of the expired Release: %q", warned)
	}
}

// A suite the archive does not have is named, with the suites there are.
func TestArchiveUnknownSuite(t *testing.T) {
	f := newFixture(t)
	_, err := f.archive(t).Release(context.Background(), "nonexistent")
	if err == nil || !strings.Contains(err.Error(), `has no suite "nonexistent"`) || !strings.Contains(err.Error(), "trixie-backports") {
		t.Fatalf("err = %v, want one naming the suite and listing Debian's", err)
	}
}

// TestRealArchive reads sid's index from Debian's archive through the
// same checks.
func TestRealArchive(t *testing.T) {
	if testing.Short() {
		t.Skip("network")
	}
	testenv.Need(t, "gpgv")
	a := &debian.Archive{CacheDir: t.TempDir(), Progress: t.Logf}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := a.Release(ctx, "sid")
	if err != nil {
		t.Fatal(err)
	}
	ix, err := a.Packages(ctx, r, "main", "amd64", "linux-image-", "linux-source-")
	if err != nil {
		t.Fatal(err)
	}
	meta, ok := ix.Find("linux-image-amd64", "")
	if !ok || len(meta.Depends) == 0 {
		t.Fatalf("sid lists no linux-image-amd64 with dependencies: %+v", meta)
	}
	t.Logf("sid: %s signed by %s; linux-image-amd64 %s depends on %v", r.Date, r.Signer, meta.Version, meta.Depends)
}
