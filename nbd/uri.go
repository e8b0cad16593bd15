package nbd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// URI is a parsed NBD URI, as the NBD URI specification defines it:
// nbd://host[:port]/export, nbds:// for TLS, nbd+unix:///export?socket=PATH
// and nbds+unix://.
type URI struct {
	TLS    bool
	Addr   Addr
	Export string
	// TLSCertDir holds ca-cert.pem and, for client authentication,
	// client-cert.pem and client-key.pem (query tls-certificates=DIR).
	TLSCertDir string
}

// ParseURI parses an NBD URI.
func ParseURI(s string) (*URI, error) {
	if !strings.Contains(s, "://") {
		return nil, fmt.Errorf("nbd: URI %q has no scheme: write nbd://HOST[:PORT]/EXPORT, or nbd+unix:///EXPORT?socket=PATH", s)
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("nbd: URI %q: %w", s, err)
	}
	out := &URI{Export: strings.TrimPrefix(u.Path, "/")}
	q, err := parseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("nbd: URI %q: %w", s, err)
	}
	for k := range q {
		if k != "socket" && k != "tls-certificates" {
			return nil, fmt.Errorf("nbd: URI %q: unknown parameter %q (known: socket, tls-certificates)", s, k)
		}
	}
	if _, ok := q["socket"]; ok && !strings.HasSuffix(u.Scheme, "+unix") {
		return nil, fmt.Errorf("nbd: URI %q: socket= is for nbd+unix:// URIs", s)
	}
	out.TLSCertDir = q["tls-certificates"]
	switch u.Scheme {
	case "nbd", "nbds":
		out.TLS, out.Addr.Network = u.Scheme == "nbds", "tcp"
		if u.Hostname() == "" {
			return nil, fmt.Errorf("nbd: URI %q has no host", s)
		}
		port := u.Port()
		if port == "" {
			port = strconv.Itoa(DefaultPort)
		}
		out.Addr.Address = net.JoinHostPort(u.Hostname(), port)
	case "nbd+unix", "nbds+unix":
		out.TLS, out.Addr.Network = u.Scheme == "nbds+unix", "unix"
		if u.Host != "" {
			return nil, fmt.Errorf("nbd: URI %q: a unix URI has no host (write nbd+unix:///export?socket=PATH)", s)
		}
		out.Addr.Address = q["socket"]
		if out.Addr.Address == "" {
			return nil, fmt.Errorf("nbd: URI %q needs ?socket=PATH", s)
		}
	default:
		return nil, fmt.Errorf("nbd: URI %q: unknown scheme %q (want nbd, nbds, nbd+unix or nbds+unix)", s, u.Scheme)
	}
	return out, nil
}

// parseQuery decodes a query with percent-escapes only: unlike HTML forms,
// NBD URIs do not turn "+" into a space, and paths may contain one.
func parseQuery(raw string) (map[string]string, error) {
	q := map[string]string{}
	for _, kv := range strings.Split(raw, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		key, err := url.PathUnescape(k)
		if err != nil {
			return nil, err
		}
		val, err := url.PathUnescape(v)
		if err != nil {
			return nil, err
		}
		q[key] = val
	}
	return q, nil
}

func (u *URI) String() string {
	scheme := "nbd"
	if u.TLS {
		scheme = "nbds"
	}
	if u.Addr.Network == "unix" {
		return scheme + "+unix:///" + u.Export + "?socket=" + url.PathEscape(u.Addr.Address) + u.certQuery("&")
	}
	return scheme + "://" + u.Addr.Address + "/" + u.Export + u.certQuery("?")
}

func (u *URI) certQuery(sep string) string {
	if u.TLSCertDir == "" {
		return ""
	}
	return sep + "tls-certificates=" + url.PathEscape(u.TLSCertDir)
}

// ClientConfig returns the handshake configuration for the URI.
func (u *URI) ClientConfig() (*ClientConfig, error) {
	cfg := &ClientConfig{Export: u.Export}
	if !u.TLS {
		return cfg, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if u.Addr.Network == "tcp" {
		tc.ServerName, _, _ = net.SplitHostPort(u.Addr.Address)
	}
	if u.TLSCertDir != "" {
		ca := filepath.Join(u.TLSCertDir, "ca-cert.pem")
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("nbd: tls-certificates: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("nbd: tls-certificates: no PEM certificate in %s", ca)
		}
		cert := filepath.Join(u.TLSCertDir, "client-cert.pem")
		if _, err := os.Stat(cert); err == nil {
			pair, err := tls.LoadX509KeyPair(cert, filepath.Join(u.TLSCertDir, "client-key.pem"))
			if err != nil {
				return nil, fmt.Errorf("nbd: client certificate in %s: %w", u.TLSCertDir, err)
			}
			tc.Certificates = []tls.Certificate{pair}
		}
	}
	cfg.TLSConfig = tc
	return cfg, nil
}

// DialConn opens the URI's transport, without negotiating.
func (u *URI) DialConn(ctx context.Context) (net.Conn, error) {
	return u.Addr.DialConn(ctx)
}
