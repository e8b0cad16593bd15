// Package tlscreds makes throwaway TLS credentials: a CA, a server
// certificate for localhost, 127.0.0.1 and ::1, and a client certificate,
// as PEM files in a directory (ca-cert.pem, server-cert.pem,
// server-key.pem, client-cert.pem, client-key.pem: the layout of NBD URIs'
// tls-certificates=DIR). Tests and the kernel suite's TLS case use them.
package tlscreds

import (
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
	"time"
)

// Creds holds PEM files of a throwaway CA, a server certificate for
// localhost and 127.0.0.1, and a client certificate, all signed by the CA.
type Creds struct {
	Dir                   string
	CACert                string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	pool                  *x509.CertPool
}

// Write writes fresh credentials into dir.
func Write(dir string) (*Creds, error) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nbdlab test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("tlscreds: CA: %w", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	s := &Creds{Dir: dir, pool: x509.NewCertPool()}
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
			return "", "", fmt.Errorf("tlscreds: %s certificate: %w", name, err)
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
		return "", fmt.Errorf("tlscreds: %w", err)
	}
	return p, nil
}

// Client returns a TLS configuration for a client of a server with these
// credentials.
func (s *Creds) Client() (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(s.ClientCert, s.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("tlscreds: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: s.pool, ServerName: "localhost"}, nil
}
