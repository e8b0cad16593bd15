package servers

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/nbd"
)

func TestNBDServer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		addr    nbd.Addr
		want    []string // lines the configuration holds
		wantErr string
	}{
		{"tcp", nbd.Addr{Network: "tcp", Address: "192.0.2.1:10809"}, []string{"listenaddr = 192.0.2.1", "port = 10809", "exportname = IMG"}, ""},
		{"unix", nbd.Addr{Network: "unix", Address: "/run/x.sock"}, []string{"unixsock = /run/x.sock", "exportname = IMG"}, ""},
		{"no port", nbd.Addr{Network: "tcp", Address: "192.0.2.1"}, nil, `address "192.0.2.1"`},
		{"vsock", nbd.Addr{Network: "vsock", Address: "3:10809"}, nil, "cannot listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			argv, err := NBDServer(dir, tc.addr, "IMG")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			conf, err := os.ReadFile(filepath.Join(dir, "nbd-server.conf"))
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(conf), w) {
					t.Errorf("configuration lacks %q:\n%s", w, conf)
				}
			}
			if !strings.Contains(strings.Join(argv, " "), filepath.Join(dir, "nbd-server.conf")) {
				t.Errorf("argv %q does not name the configuration", argv)
			}
		})
	}
	// A configuration that cannot be written is an error, not a server
	// started on a missing file.
	if _, err := NBDServer(filepath.Join(t.TempDir(), "missing"), nbd.Addr{Network: "unix", Address: "/x"}, "IMG"); err == nil {
		t.Error("NBDServer wrote into a missing directory")
	}
}

func TestFind(t *testing.T) {
	if s, err := Find("nbdkit-file"); err != nil || s.Name != "nbdkit-file" {
		t.Errorf("Find(nbdkit-file) = %v, %v", s.Name, err)
	}
	if _, err := Find("nosuch"); err == nil || !strings.Contains(err.Error(), "nbdlab-mem") {
		t.Errorf("Find(nosuch) = %v, want an error listing the known servers", err)
	}
}

// The shell that holds nbd-server's place lives as long as the daemon,
// also when the daemon writes its pid file well after its parent
// returned (as on a loaded host), and goes when the daemon does.
func TestNBDServerWaitsForPidFile(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// A stand-in daemon: the parent returns at once, the child writes
	// its pid 0.5 s later and lives until its stop file appears.
	fake := `#!/bin/sh
sh -c 'sleep 0.5; echo $$ > "$1"; while [ ! -e "$1.stop" ]; do sleep 0.1; done' daemon "$4" >/dev/null 2>&1 &
exit 0
`
	if err := os.WriteFile(filepath.Join(bin, "nbd-server"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	argv, err := NBDServer(dir, nbd.Addr{Network: "unix", Address: filepath.Join(dir, "s")}, "IMG")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("the holding shell ended before the daemon did: %v %s", err, stderr.String())
	case <-time.After(1200 * time.Millisecond):
	}
	if err := os.WriteFile(filepath.Join(dir, "nbd-server.pid.stop"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err == nil {
			t.Fatal("the holding shell exited 0 after its daemon died, want 1")
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the holding shell outlived its daemon by 10 s")
	}
}

// TestMemoryNeedsNoImage: a server marked Memory names no image, in its
// command line or in a file it reads; every other one does.
func TestMemoryNeedsNoImage(t *testing.T) {
	for _, s := range TCP() {
		dir := t.TempDir()
		img := filepath.Join(dir, "IMAGE.img")
		argv, err := s.Argv(Args{Nbdlab: "nbdlab", Dir: dir, IP: "192.0.2.1", Port: 10809, Img: img, Size: 1 << 20})
		if err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		named := strings.Contains(strings.Join(argv, " "), img)
		files, _ := os.ReadDir(dir)
		for _, f := range files {
			b, _ := os.ReadFile(filepath.Join(dir, f.Name()))
			named = named || strings.Contains(string(b), img)
		}
		if named == s.Memory {
			t.Errorf("%s: Memory %v, but names the image: %v (%q)", s.Name, s.Memory, named, argv)
		}
	}
}
