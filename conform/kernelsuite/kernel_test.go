package kernelsuite

import "testing"

func TestNBDLogTail(t *testing.T) {
	log := "[1.0] eth0: link up\n[2.0] block nbd0: NBD_DISCONNECT\n[2.1] block nbd0: Disconnected due to user request.\n[3.0] EXT4-fs (nbd0): mounted\n[4.0] usb 1-1: new device\n"
	for _, tc := range []struct {
		n    int
		want string
	}{
		{12, "  [2.0] block nbd0: NBD_DISCONNECT\n  [2.1] block nbd0: Disconnected due to user request.\n  [3.0] EXT4-fs (nbd0): mounted"},
		{1, "  [3.0] EXT4-fs (nbd0): mounted"},
		{0, ""},
	} {
		if got := nbdLogTail(log, tc.n); got != tc.want {
			t.Errorf("nbdLogTail(log, %d) = %q, want %q", tc.n, got, tc.want)
		}
	}
	if got := nbdLogTail("[1.0] eth0: link up\n", 12); got != "" {
		t.Errorf("no nbd line: %q", got)
	}
}
