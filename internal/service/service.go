// Package service is what a server needs to run under a service manager:
// listening sockets passed by systemd (socket activation, LISTEN_FDS), a
// connection on standard input (inetd, systemd's Accept=yes), readiness
// and stopping notices (sd_notify), and a pid file. The systemd protocols
// come from github.com/coreos/go-systemd, the library systemd's own Go
// users share; this package only puts them in the shape nbdlab serve
// wants and names what went wrong.
package service

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

// Activated returns the listening sockets systemd passed to this process
// (LISTEN_FDS with LISTEN_PID naming it), or none when it was not socket
// activated. The variables are cleared, so that children do not take the
// sockets for theirs.
func Activated() ([]net.Listener, error) {
	lns, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	for i, l := range lns {
		if l == nil {
			for _, l := range lns {
				if l != nil {
					l.Close()
				}
			}
			return nil, fmt.Errorf("socket activation: descriptor %d is not a listening stream socket (use ListenStream= and Accept=no, or --inetd with Accept=yes)", 3+i)
		}
	}
	return lns, nil
}

// Inetd returns the connection on standard input, as inetd and systemd's
// Accept=yes pass it.
func Inetd() (net.Conn, error) {
	if v, err := syscall.GetsockoptInt(0, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN); err == nil && v != 0 {
		return nil, errors.New("--inetd: standard input is a listening socket, not a connection: pass connections (systemd-socket-activate --accept --inetd, Accept=yes), or drop --inetd to serve the listening socket")
	}
	f := os.NewFile(0, "standard input")
	c, err := net.FileConn(f)
	f.Close()
	if errors.Is(err, syscall.ENOTSOCK) {
		return nil, errors.New("--inetd: standard input is not a socket (run under inetd, systemd-socket-activate --accept --inetd or a unit with Accept=yes)")
	}
	if err != nil {
		return nil, fmt.Errorf("--inetd: standard input is not a connected socket (run under inetd, systemd-socket-activate --inetd or a unit with Accept=yes): %w", err)
	}
	return c, nil
}

// IsSocket reports whether f is a socket: under inetd, standard error
// may be the client's connection, where a log line would corrupt the
// protocol.
func IsSocket(f *os.File) bool {
	var st syscall.Stat_t
	return syscall.Fstat(int(f.Fd()), &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFSOCK
}

// Notify tells the service manager the state ("READY=1", "STOPPING=1")
// when NOTIFY_SOCKET asks for it; without one it does nothing.
func Notify(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		return fmt.Errorf("sd_notify %s: %w", state, err)
	}
	return nil
}

// PIDFile writes this process's pid to path, refusing one that names a
// live process, and returns a function that removes it.
func PIDFile(path string) (func() error, error) {
	if b, err := os.ReadFile(path); err == nil {
		if pid, err := strconv.Atoi(string(trimNL(b))); err == nil && pid > 0 && alive(pid) {
			return nil, fmt.Errorf("--pid-file %s: process %d is running; is another nbdlab serve using it?", path, pid)
		}
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("--pid-file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("--pid-file: %w", err)
	}
	return func() error {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("--pid-file: %w", err)
		}
		return nil
	}, nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
