package servers

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
