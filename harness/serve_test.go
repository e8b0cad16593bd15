package harness_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/harness"
	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
	"github.com/nbdlab/nbdlab/servers"
)

// TestMain puts the system's Python first on PATH: python3-libnbd (nbdsh)
// lives there, and a pyenv Python may come first.
func TestMain(m *testing.M) {
	os.Setenv("PATH", "/usr/bin:/bin:"+os.Getenv("PATH"))
	os.Exit(m.Run())
}

// serveBoth starts nbdlab serve on TCP and a unix socket with the given
// exports.
func serveBoth(t *testing.T, exports ...string) *servers.Nbdlab {
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	args := append([]string{"--listen", "127.0.0.1:0", "--listen", "unix:" + sock}, exports...)
	return harness.Serve(t, args...)
}

// transports runs fn once over TCP and once over the unix socket.
func transports(t *testing.T, fn func(t *testing.T, unix bool)) {
	for _, tr := range []struct {
		name string
		unix bool
	}{{"tcp", false}, {"unix", true}} {
		t.Run(tr.name, func(t *testing.T) { fn(t, tr.unix) })
	}
}

func randomFile(t *testing.T, size int) (string, []byte) {
	data := make([]byte, size)
	rand.Read(data)
	p := filepath.Join(t.TempDir(), "random.img")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, data
}

func TestNbdinfo(t *testing.T) {
	testenv.Need(t, "nbdinfo", "qemu-img")
	img, _ := randomFile(t, 1<<20)
	s := serveBoth(t, "disk=file:"+img, "scratch=mem:1G", "ro=mem:16M,ro")
	transports(t, func(t *testing.T, unix bool) {
		list := harness.Run(t, "nbdinfo", "--list", s.URI("", unix))
		for _, name := range []string{`export="disk"`, `export="scratch"`, `export="ro"`, "base:allocation", "block_size_maximum: 67108864"} {
			if !strings.Contains(list, name) {
				t.Errorf("nbdinfo --list lacks %q:\n%s", name, list)
			}
		}
		// The default export is the first one.
		if got := strings.TrimSpace(harness.Run(t, "nbdinfo", "--size", s.URI("", unix))); got != "1048576" {
			t.Errorf("default export size %q, want 1048576", got)
		}
		// base:allocation by the empty name, as libnbd and qemu ask for it.
		if got := harness.Run(t, "nbdinfo", "--map", s.URI("", unix)); !strings.Contains(got, "1048576    0  data") {
			t.Errorf("map of the default export:\n%s", got)
		}
		if got := harness.Run(t, "qemu-img", "map", "--output=json", "-f", "raw", s.URI("", unix)); !strings.Contains(got, `"length": 1048576`) {
			t.Errorf("qemu-img map of the default export:\n%s", got)
		}
		if got := harness.Run(t, "nbdinfo", "--map", s.URI("scratch", unix)); !strings.Contains(got, "1073741824    3  hole,zero") {
			t.Errorf("map of an empty mem export:\n%s", got)
		}
		if got := harness.Run(t, "nbdinfo", "--map", s.URI("disk", unix)); !strings.Contains(got, "1048576    0  data") {
			t.Errorf("map of a full file export:\n%s", got)
		}
		for _, can := range []string{"connect", "read", "write", "flush", "fua", "trim", "zero", "fast-zero", "cache", "df", "multi-conn", "structured-reply"} {
			if out, err := harness.RunErr("nbdinfo", "--can", can, s.URI("scratch", unix)); err != nil {
				t.Errorf("nbdinfo --can %s: %v %s", can, err, out)
			}
		}
		for _, cannot := range []string{"write", "trim", "zero"} {
			if _, err := harness.RunErr("nbdinfo", "--can", cannot, s.URI("ro", unix)); err == nil {
				t.Errorf("nbdinfo --can %s on a read-only export succeeded", cannot)
			}
		}
		if _, err := harness.RunErr("nbdinfo", "--is", "read-only", s.URI("ro", unix)); err != nil {
			t.Errorf("nbdinfo --is read-only on the ro export: %v", err)
		}
		if out, err := harness.RunErr("nbdinfo", "--size", s.URI("nope", unix)); err == nil || !strings.Contains(out, "nope") {
			t.Errorf("unknown export: err %v, output %q; want an error naming it", err, out)
		}
	})
}

func TestNbdshCommandsAndErrors(t *testing.T) {
	testenv.Need(t, "nbdsh")
	s := serveBoth(t, "rw=mem:64M", "ro=mem:64M,ro")
	script, _ := filepath.Abs("testdata/commands.py")
	transports(t, func(t *testing.T, unix bool) {
		t.Setenv("NBDLAB_RW", s.URI("rw", unix))
		t.Setenv("NBDLAB_RO", s.URI("ro", unix))
		out := harness.Run(t, "nbdsh", "-n", "-c", fmt.Sprintf("exec(open(%q).read())", script))
		if !strings.Contains(out, "all checks passed") {
			t.Fatalf("script output:\n%s", out)
		}
	})
}

func TestNbdcopyRoundTrip(t *testing.T) {
	testenv.Need(t, "nbdcopy")
	src, data := randomFile(t, 24<<20+12345)
	s := serveBoth(t, fmt.Sprintf("scratch=mem:%d", len(data)))
	transports(t, func(t *testing.T, unix bool) {
		dst := filepath.Join(t.TempDir(), "back.img")
		harness.Run(t, "nbdcopy", "--flush", src, s.URI("scratch", unix))
		harness.Run(t, "nbdcopy", s.URI("", unix), dst) // the default export, by its empty name
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("nbdcopy round trip changed the data")
		}
	})
}

func TestQemuImgAndQemuIo(t *testing.T) {
	testenv.Need(t, "qemu-img", "qemu-io")
	src, orig := randomFile(t, 8<<20)
	s := serveBoth(t, "img=file:"+src+",cow", "out=mem:8M")
	transports(t, func(t *testing.T, unix bool) {
		dst := filepath.Join(t.TempDir(), "out.raw")
		harness.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", s.URI("img", unix), dst)
		harness.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, dst)
		harness.Run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, s.URI("out", unix))
		harness.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, s.URI("out", unix))
	})
	// qemu-io writes through the ,cow export; the base file must not change.
	out := harness.Run(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 4096 65536", "-c", "read -P 0xab 4096 65536",
		"-c", "write -z 4096 4096", "-c", "read -P 0 4096 4096",
		"-c", "discard 0 1M", "-c", "read -P 0 0 1M", "-c", "flush", s.URI("img", false))
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	if !bytes.Equal(mustRead(t, src), orig) {
		t.Fatal("writes to a ,cow export reached the base file")
	}
}

func mustRead(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNbdinfoOverTLS(t *testing.T) {
	testenv.Need(t, "nbdinfo")
	creds := nbdtest.NewTLS(t)
	sock := filepath.Join(t.TempDir(), "tls.sock")
	s := harness.Serve(t, "--listen", "127.0.0.1:0", "--listen", "unix:"+sock,
		"--tls-cert", creds.ServerCert, "--tls-key", creds.ServerKey, "--tls-ca", creds.CACert, "secure=mem:32M")
	port := s.TCP[strings.LastIndexByte(s.TCP, ':')+1:]
	uri := fmt.Sprintf("nbds://localhost:%s/secure?tls-certificates=%s", port, creds.Dir)
	out := harness.Run(t, "nbdinfo", uri)
	if !strings.Contains(out, "with TLS") || !strings.Contains(out, "export-size: 33554432") {
		t.Errorf("nbdinfo over TLS:\n%s", out)
	}
	// Without TLS nothing but STARTTLS is allowed.
	if out, err := harness.RunErr("nbdinfo", fmt.Sprintf("nbd://localhost:%s/secure", port)); err == nil {
		t.Errorf("plain client was served by a TLS-only server:\n%s", out)
	} else if !strings.Contains(out, "TLS") {
		t.Errorf("plain client's error does not mention TLS:\n%s", out)
	}
	// A client without a certificate signed by the CA is refused.
	bare := t.TempDir()
	b, _ := os.ReadFile(creds.CACert)
	os.WriteFile(filepath.Join(bare, "ca-cert.pem"), b, 0o600)
	if _, err := harness.RunErr("nbdinfo", fmt.Sprintf("nbds://localhost:%s/secure?tls-certificates=%s", port, bare)); err == nil {
		t.Error("client without a certificate was accepted")
	}
}

func TestFioVerify(t *testing.T) {
	testenv.Need(t, "fio")
	dir := t.TempDir()
	img := filepath.Join(dir, "fio.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 64<<20)
	s := serveBoth(t, "file=file:"+img, "mem=mem:64M")
	for _, export := range []string{"file", "mem"} {
		transports(t, func(t *testing.T, unix bool) {
			out := filepath.Join(t.TempDir(), "fio.json")
			harness.Run(t, "fio", "--name=verify", "--ioengine=nbd", "--uri="+s.URI(export, unix),
				"--rw=randwrite", "--bs=4k", "--bsrange=512-64k", "--iodepth=16", "--size=32M",
				"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--verify_state_save=0", "--output-format=json", "--output="+out)
			b, _ := os.ReadFile(out)
			var res struct {
				Jobs []struct {
					Error int
					Read  struct {
						IOBytes int64 `json:"io_bytes"`
					}
					Write struct {
						IOBytes int64 `json:"io_bytes"`
					}
				}
			}
			if err := json.Unmarshal(b, &res); err != nil || len(res.Jobs) != 1 {
				t.Fatalf("fio JSON: %v\n%s", err, b)
			}
			t.Logf("fio wrote %d bytes, verified %d", res.Jobs[0].Write.IOBytes, res.Jobs[0].Read.IOBytes)
			// Every byte written must have been read back and checked.
			j := res.Jobs[0]
			if j.Error != 0 || j.Write.IOBytes < 32<<20 || j.Read.IOBytes < j.Write.IOBytes {
				t.Fatalf("fio: error %d, wrote %d bytes, verified %d", j.Error, j.Write.IOBytes, j.Read.IOBytes)
			}
		})
	}
}

// TestServeLogsAndSurvivesBadClients checks the log line of a malformed
// handshake, -v request tracing, and that the server keeps serving.
func TestServeLogsAndSurvivesBadClients(t *testing.T) {
	testenv.Need(t, "nbdinfo")
	s := harness.Serve(t, "-v", "--listen", "127.0.0.1:0", "d=mem:1M")
	for _, garbage := range [][]byte{
		[]byte("GET / HTTP/1.0\r\n\r\n"),                  // not NBD at all
		{0, 0, 0, 0xff},                                   // unknown client flags
		append([]byte{0, 0, 0, 3}, "NOTAMAGICxxxxxxx"...), // bad option magic
	} {
		c, err := net.Dial("tcp", s.TCP)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(garbage)
		io.Copy(io.Discard, c) // the server closes its side
		c.Close()
	}
	out := harness.Run(t, "nbdinfo", "--map", s.URI("d", false))
	if !strings.Contains(out, "1048576    3  hole,zero") {
		t.Fatalf("server stopped serving after bad clients: %q", out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(s.Output(), "cmd=NBD_CMD_BLOCK_STATUS") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	log := s.Output()
	for _, want := range []string{
		"handshake failed; closing connection",
		"unknown client flags 0xff",
		"option magic",
		"msg=request", // -v traces requests
		"cmd=NBD_CMD_BLOCK_STATUS flags=0 offset=0 length=1048576", // with their fields
		"errno=OK",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("server log lacks %q:\n%s", want, log)
		}
	}
}

// TestQcow2 serves qcow2 images qemu-img made (compressed, and with a
// backing file under them) and wants qemu-img compare to find the export
// identical to the image, block status to show the image's holes, and a
// ,cow export to take writes without changing the image.
func TestQcow2(t *testing.T) {
	testenv.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	src, _ := randomFile(t, 4<<20)
	base := filepath.Join(dir, "base.qcow2")
	harness.Run(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", "-f", "raw", src, base)
	top := filepath.Join(dir, "top.qcow2")
	harness.Run(t, "qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "8M")
	harness.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 300K", "-c", "write -z 2M 64K", top)
	before := mustRead(t, top)
	s := serveBoth(t, "img=qcow2:"+top+",ro", "scratch=qcow2:"+top+",cow")
	transports(t, func(t *testing.T, unix bool) {
		harness.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", s.URI("img", unix), top)
	})
	m := harness.Run(t, "qemu-img", "map", "--output=json", "-f", "raw", s.URI("img", false))
	for _, hole := range []string{`"start": 2097152, "length": 65536,`, `"start": 4194304, "length": 4194304,`} {
		found := false
		for _, line := range strings.Split(m, "\n") {
			found = found || strings.Contains(line, hole) && strings.Contains(line, `"zero": true, "data": false`)
		}
		if !found {
			t.Errorf("block status does not show %s (zero-flagged, and past the backing file) as a hole:\n%s", hole, m)
		}
	}
	out := harness.Run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M", "-c", "flush", s.URI("scratch", false))
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io on the ,cow export:\n%s", out)
	}
	if _, err := harness.RunErr("qemu-io", "-f", "raw", "-c", "write 0 4096", s.URI("img", false)); err == nil {
		t.Error("a write to the ,ro export succeeded")
	}
	if !bytes.Equal(mustRead(t, top), before) {
		t.Fatal("serving changed the image")
	}
}

// TestQcow2ReadWrite writes to a qcow2 image over a backing file through
// nbdlab serve with nbdcopy and qemu-io (data, zeroes, discards), and the
// same to a raw copy; after the server stops, qemu-img check finds the
// image clean and qemu-img compare finds it identical to the copy, and
// the backing file is unchanged.
func TestQcow2ReadWrite(t *testing.T) {
	testenv.Need(t, "qemu-img", "qemu-io", "nbdcopy")
	dir := t.TempDir()
	src, _ := randomFile(t, 6<<20)
	harness.Run(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-f", "raw", src, filepath.Join(dir, "base.qcow2"))
	top := filepath.Join(dir, "top.qcow2")
	harness.Run(t, "qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.qcow2", "-F", "qcow2", top, "8M")
	baseBefore := mustRead(t, filepath.Join(dir, "base.qcow2"))
	mirror := filepath.Join(dir, "mirror.raw")
	harness.Run(t, "qemu-img", "convert", "-O", "raw", top, mirror)
	patch, patchData := randomFile(t, 3<<20)

	s, err := servers.StartServe(context.Background(), testenv.Nbdlab(t), "--listen", "127.0.0.1:0", "rw=qcow2:"+top)
	if err != nil {
		t.Fatal(err)
	}
	uri := s.URI("rw", false)
	harness.Run(t, "nbdcopy", "--flush", patch, uri) // the first 3 MiB
	ops := []string{"-c", "write -P 0x33 3000000 70000", "-c", "write -z 4M 256K", "-c", "write -z 5000000 10000",
		"-c", "discard 6M 1M", "-c", "write -P 0x44 7M 4096", "-c", "flush"}
	harness.Run(t, "qemu-io", append(append([]string{"-f", "raw"}, ops...), uri)...)
	harness.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", uri, uri) // reads back over NBD
	if err := s.Stop(30 * time.Second); err != nil {
		t.Fatalf("nbdlab serve: %v\n%s", err, s.Output())
	}
	m, err := os.OpenFile(mirror, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	m.WriteAt(patchData, 0)
	m.Close()
	harness.Run(t, "qemu-io", append(append([]string{"-f", "raw"}, ops...), mirror)...)

	out := harness.Run(t, "qemu-img", "check", top)
	if !strings.Contains(out, "No errors were found") || strings.Contains(out, "leaked") {
		t.Fatalf("qemu-img check after nbdlab wrote:\n%s", out)
	}
	harness.Run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", top, mirror)
	if !bytes.Equal(mustRead(t, filepath.Join(dir, "base.qcow2")), baseBefore) {
		t.Fatal("writing changed the backing file")
	}
}
