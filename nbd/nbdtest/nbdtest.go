// Package nbdtest provides stand-ins for tests of code that uses package
// nbd: a client/server pair over a socket pair and throwaway TLS
// credentials.
package nbdtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

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

// TLS holds PEM files of a throwaway CA, a server certificate for
// localhost and 127.0.0.1, and a client certificate, all signed by the CA.
type TLS struct {
	Dir                   string
	CACert                string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	pool                  *x509.CertPool
}

// NewTLS writes fresh credentials into a temporary directory.
func NewTLS(t testing.TB) *TLS {
	t.Helper()
	s, err := WriteTLS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// WriteTLS writes fresh credentials into dir.
func WriteTLS(dir string) (*TLS, error) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nbdlab test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("nbdtest: CA: %w", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	s := &TLS{Dir: dir, pool: x509.NewCertPool()}
	s.pool.AddCert(ca)
	if s.CACert, err = writePEM(dir, "ca-cert.pem", "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string, error) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return "", "", fmt.Errorf("nbdtest: %s certificate: %w", name, err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		c, err := writePEM(dir, name+"-cert.pem", "CERTIFICATE", der)
		if err != nil {
			return "", "", err
		}
		k, err := writePEM(dir, name+"-key.pem", "EC PRIVATE KEY", kder)
		return c, k, err
	}
	if s.ServerCert, s.ServerKey, err = leaf("server", 2, x509.ExtKeyUsageServerAuth); err != nil {
		return nil, err
	}
	if s.ClientCert, s.ClientKey, err = leaf("client", 3, x509.ExtKeyUsageClientAuth); err != nil {
		return nil, err
	}
	return s, nil
}

func writePEM(dir, name, typ string, der []byte) (string, error) {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return "", fmt.Errorf("nbdtest: %w", err)
	}
	return p, nil
}

// Client returns a TLS configuration for a client of a server with these
// credentials.
func (s *TLS) Client() (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(s.ClientCert, s.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("nbdtest: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: s.pool, ServerName: "localhost"}, nil
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
