package nbd_test

import (
	"net"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/nbd"
	"github.com/nbdlab/nbdlab/nbd/nbdtest"
)

func TestParseURI(t *testing.T) {
	tests := []struct {
		in, network, addr, export string
		tls                       bool
		wantErr                   string
	}{
		{in: "nbd://example.org/disk", network: "tcp", addr: "example.org:10809", export: "disk"},
		{in: "nbd://127.0.0.1:10900/", network: "tcp", addr: "127.0.0.1:10900"},
		{in: "nbd://[::1]:10809/x", network: "tcp", addr: "[::1]:10809", export: "x"},
		{in: "nbds://h/e?tls-certificates=/etc/pki", network: "tcp", addr: "h:10809", export: "e", tls: true},
		{in: "nbd+unix:///e?socket=/run/s.sock", network: "unix", addr: "/run/s.sock", export: "e"},
		{in: "nbds+unix:///?socket=/s", network: "unix", addr: "/s", tls: true},
		{in: "nbd+unix:///e?socket=/tmp/a+b%20c", network: "unix", addr: "/tmp/a+b c", export: "e"},
		{in: "nbd+unix:///e", wantErr: "needs ?socket=PATH"},
		{in: "nbd+unix://host/e?socket=/s", wantErr: "has no host"},
		{in: "http://h/e", wantErr: `unknown scheme "http"`},
		{in: "nbd:///e", wantErr: "has no host"},
		{in: "127.0.0.1:20020", wantErr: "has no scheme: write nbd://HOST[:PORT]/EXPORT"},
		{in: "nbd://h/e?tls-certificate=/x", wantErr: `unknown parameter "tls-certificate"`},
		{in: "nbd://h/e?socket=/x", wantErr: "socket= is for nbd+unix://"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			u, err := nbd.ParseURI(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.Addr.Network != tt.network || u.Addr.Address != tt.addr || u.Export != tt.export || u.TLS != tt.tls {
				t.Fatalf("got %+v", u)
			}
			again, err := nbd.ParseURI(u.String())
			if err != nil || *again != *u {
				t.Fatalf("String() %q does not parse back: %+v, %v", u.String(), again, err)
			}
		})
	}
}

func TestURIWithTLSCertificates(t *testing.T) {
	creds := nbdtest.NewTLS(t)
	srv := newServer(&nbd.Export{Name: "s", Backend: nbd.NewMem(4096)})
	srv.TLSConfig = creds.ServerConfig(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	u, err := nbd.ParseURI("nbds://localhost:" + port + "/s?tls-certificates=" + creds.Dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := u.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := u.DialConn(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := nbd.NewClient(ctx(t), conn, cfg)
	if err != nil {
		t.Fatalf("TLS through the URI's certificates: %v", err)
	}
	c.Close()
}

func TestParseAddr(t *testing.T) {
	for _, tt := range []struct {
		in, network, address, wantErr string
	}{
		{in: "127.0.0.1:10809", network: "tcp", address: "127.0.0.1:10809"},
		{in: "[::1]:0", network: "tcp", address: "[::1]:0"},
		{in: "unix:/run/a.sock", network: "unix", address: "/run/a.sock"},
		{in: "unix:", wantErr: "needs a socket path"},
		{in: "localhost", wantErr: "want HOST:PORT or unix:PATH"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			a, err := nbd.ParseAddr(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseAddr(%q) = %v, %v; want error with %q", tt.in, a, err, tt.wantErr)
				}
				return
			}
			if err != nil || a.Network != tt.network || a.Address != tt.address {
				t.Fatalf("ParseAddr(%q) = %+v, %v", tt.in, a, err)
			}
			if a.String() != tt.in {
				t.Fatalf("%+v prints as %q, want %q", a, a.String(), tt.in)
			}
		})
	}
}
