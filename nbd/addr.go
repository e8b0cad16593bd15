package nbd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// Addr is a server address as nbdlab's flags and tools write it:
// "HOST:PORT" for TCP or "unix:PATH" for a unix socket.
type Addr struct {
	Network string // "tcp" or "unix"
	Address string // HOST:PORT, or the socket path
}

// ParseAddr parses "HOST:PORT" or "unix:PATH".
func ParseAddr(s string) (Addr, error) {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if path == "" {
			return Addr{}, fmt.Errorf("nbd: address %q: unix: needs a socket path", s)
		}
		return Addr{"unix", path}, nil
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return Addr{}, fmt.Errorf("nbd: address %q: want HOST:PORT or unix:PATH: %w", s, err)
	}
	return Addr{"tcp", s}, nil
}

// AddrOf is the address l listens on.
func AddrOf(l net.Listener) Addr {
	return Addr{l.Addr().Network(), l.Addr().String()}
}

// String writes a in the form ParseAddr reads.
func (a Addr) String() string {
	if a.Network == "unix" {
		return "unix:" + a.Address
	}
	return a.Address
}

// URI is the NBD URI of export at a, without TLS.
func (a Addr) URI(export string) string {
	u := URI{Addr: a, Export: export}
	return u.String()
}

// DialConn opens a connection to a, without negotiating.
func (a Addr) DialConn(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, a.Network, a.Address)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", a, err)
	}
	return c, nil
}

// Listen listens on addr: "HOST:PORT" for TCP or "unix:PATH" for a unix
// socket. A socket file left behind by a server that is gone is replaced;
// one that a live server still listens on is an error, and so is a path
// that exists and is not a socket.
func Listen(addr string) (net.Listener, error) {
	a, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	if a.Network == "unix" {
		if err := removeStaleSocket(a.Address); err != nil {
			return nil, fmt.Errorf("nbd: listen %q: %w", addr, err)
		}
	}
	l, err := net.Listen(a.Network, a.Address)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen %q: %w", addr, err)
	}
	return l, nil
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; remove it or choose another path", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("another server is listening on %s", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("probe existing socket %s: %w", path, err)
	}
	return os.Remove(path)
}

// ListenAll listens on every address, or on none if any fails.
func ListenAll(addrs []string) ([]net.Listener, error) {
	var ls []net.Listener
	for _, a := range addrs {
		l, err := Listen(a)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}
