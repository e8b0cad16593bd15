//go:build linux

package hold

import (
	"net/netip"
	"strings"
	"testing"
)

// Lines of /proc/net/tcp and tcp6 as the kernel writes them (x86: the IP's
// 32-bit words little-endian).
const procTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2A39 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:D2F0 0100007F:2A39 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:D2F2 0100007F:2A3A 08 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0000000000000000FFFF00000100007F:D2F4 0000000000000000FFFF00000200000A:2A39 01 00000000:00000000 00:00000000 00000000 0 0 4 1 0 20 4 30 10 -1
`

func TestEstablished(t *testing.T) {
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:10809", true},  // line 1
		{"127.0.0.1:10810", false}, // line 2 is CLOSE_WAIT: the server went away
		{"127.0.0.1:10811", false}, // nothing at all
		{"10.0.0.2:10809", true},   // line 3, v4-mapped in the tcp6 table
		{"[::ffff:10.0.0.2]:10809", true},
	} {
		if got := establishedIn(strings.NewReader(procTCP), netip.MustParseAddrPort(tt.addr)); got != tt.want {
			t.Errorf("%s: established %v, want %v", tt.addr, got, tt.want)
		}
	}
}

func TestTCPServer(t *testing.T) {
	for _, tt := range []struct {
		uri, want string
	}{
		{"nbd://127.0.0.1/d", "127.0.0.1:10809"},
		{"nbd://localhost:10900/d", "127.0.0.1:10900"},
		{"nbd://[::1]:10901/d", "[::1]:10901"},
		{"nbd://server.example/d", ""},      // a name: not looked up
		{"nbd+unix:///d?socket=/run/s", ""}, // not TCP
		{"nbds://127.0.0.1/d", ""},          // relayed by a holder, which Dead checks instead
		{"/srv/disk.img", ""},
	} {
		got, ok := tcpServer(tt.uri)
		if (ok && got.String() != tt.want) || (!ok && tt.want != "") {
			t.Errorf("%s: %v %v, want %q", tt.uri, got, ok, tt.want)
		}
	}
}
