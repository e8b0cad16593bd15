// Package nbdtest provides stand-ins for tests of code that uses package
// nbd: a client/server pair over a socket pair and throwaway TLS
// credentials.
package nbdtest

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/internal/tlscreds"
	"github.com/nbdlab/nbdlab/internal/unixpair"
	"github.com/nbdlab/nbdlab/nbd"
)

// Pair serves srv on one end of a unix socket pair, as the kernel client
// is served, and returns a client negotiated on the other. Both are closed
// when the test ends.
func Pair(t testing.TB, srv *nbd.Server, cfg *nbd.ClientConfig) *nbd.Client {
	t.Helper()
	a, b := SocketPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(context.Background(), a)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nbd.NewClient(ctx, b, cfg)
	if err != nil {
		b.Close()
		<-done
		t.Fatalf("nbdtest: handshake: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return c
}

// SocketPair returns the two ends of a connected unix stream socket pair.
func SocketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	a, b, err := unixpair.Conns("nbdtest")
	if err != nil {
		t.Fatalf("nbdtest: %v", err)
	}
	return a, b
}

// TLS is a set of throwaway credentials (tlscreds.Creds) with helpers
// for tests.
type TLS struct{ *tlscreds.Creds }

// NewTLS writes fresh credentials into a temporary directory.
func NewTLS(t testing.TB) *TLS {
	t.Helper()
	s, err := tlscreds.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &TLS{s}
}

// ServerConfig is a TLS configuration for a server with these credentials
// that requires client certificates.
func (s *TLS) ServerConfig(t testing.TB) *tls.Config {
	cfg, err := nbd.ServerTLSConfig(s.ServerCert, s.ServerKey, s.CACert)
	if err != nil {
		t.Fatalf("nbdtest: %v", err)
	}
	return cfg
}

// ClientConfig is a TLS configuration for a client of such a server.
func (s *TLS) ClientConfig(t testing.TB) *tls.Config {
	cfg, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
