//go:build linux

package hold

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/nbdlab/nbdlab/internal/procfs"
	"github.com/nbdlab/nbdlab/nbd/kernel"
)

// The kernel calls a device connected for as long as it has a
// configuration, whether or not anything still serves it: a device whose
// server was killed stays "connected", its requests failing or waiting.
// Dead looks further, at what nbdlab recorded: the process that holds the
// device, and for a TCP server the kernel's socket table.

// Dead returns why connected device d no longer has a server, or "" when
// it has one or nothing tells otherwise.
func Dead(d kernel.Device, st State, known bool) string {
	if !d.Connected || !known {
		return ""
	}
	if st.PID > 0 && !procfs.Alive(st.PID) {
		return fmt.Sprintf("its holder, pid %d, is gone", st.PID)
	}
	if st.NetNS == "" || st.NetNS != netNS() {
		return "" // its sockets are in another namespace's table
	}
	addr, ok := tcpServer(st.Source)
	if !ok {
		return ""
	}
	up, err := established("/proc/net/tcp", addr)
	if err == nil && !up {
		up, err = established("/proc/net/tcp6", addr)
	}
	if err != nil || up {
		return ""
	}
	why := fmt.Sprintf("no connection to %s is open: the server went away", addr)
	if st.Persist && st.PID > 0 {
		why += fmt.Sprintf("; pid %d is reconnecting", st.PID)
	}
	return why
}

// netNS names this process's network namespace ("net:[4026531840]").
func netNS() string {
	s, _ := os.Readlink("/proc/self/ns/net")
	return s
}

// tcpServer returns the server address of an nbd:// URI whose host is an
// IP address or localhost.
func tcpServer(uri string) (netip.AddrPort, bool) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "nbd" {
		return netip.AddrPort{}, false
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "10809"
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, false
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip, uint16(p)), true
}

// established reports whether the socket table at path (/proc/net/tcp or
// tcp6) has an established connection to addr.
func established(path string, addr netip.AddrPort) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return establishedIn(f, addr), nil
}

const tcpEstablished = "01"

func establishedIn(r io.Reader, addr netip.AddrPort) bool {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != tcpEstablished {
			continue
		}
		if rem, ok := parseProcAddr(f[2]); ok && rem.Port() == addr.Port() && rem.Addr().Unmap() == addr.Addr().Unmap() {
			return true
		}
	}
	return false
}

// parseProcAddr parses an address of /proc/net/tcp: the IP as 32-bit
// words in host order (little-endian here), in hex, then ":PORT" in hex.
func parseProcAddr(s string) (netip.AddrPort, bool) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, false
	}
	b, err := hex.DecodeString(h)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, false
	}
	for i := 0; i < len(b); i += 4 {
		binary.BigEndian.PutUint32(b[i:], binary.LittleEndian.Uint32(b[i:]))
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	ip, _ := netip.AddrFromSlice(net.IP(b))
	return netip.AddrPortFrom(ip, uint16(port)), true
}
