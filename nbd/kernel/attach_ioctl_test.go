//go:build linux

package kernel

import "testing"

// The size an ioctl attach waits for is the one the kernel will show:
// the device's whole blocks, in sectors.
func TestIoctlSize(t *testing.T) {
	for _, tc := range []struct {
		size, bs uint64
		want     int64
	}{
		{1 << 30, 0, 1 << 30},
		{1 << 30, 4096, 1 << 30},
		{1<<20 + 1000, 0, 1<<20 + 512},
		{1<<20 + 1000, 4096, 1 << 20},
		{100, 0, 0},
		{0, 0, 0},
	} {
		if got := ioctlSize(Config{Size: tc.size, BlockSize: tc.bs}); got != tc.want {
			t.Errorf("ioctlSize(size %d, block size %d) = %d, want %d", tc.size, tc.bs, got, tc.want)
		}
	}
}
