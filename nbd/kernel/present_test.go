//go:build linux

package kernel

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestMissing(t *testing.T) {
	for _, tc := range []struct {
		modules, listed bool
		want            string
	}{
		{false, false, "cannot load modules"},
		{true, true, "modprobe nbd"},
		{true, false, "nbdlab kmod build"},
	} {
		err := missing("kernel 6.1.0-9-amd64", tc.modules, tc.listed)
		if !errors.Is(err, ErrNoNBD) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("modules %v, listed %v: %v, want one saying %q", tc.modules, tc.listed, err, tc.want)
		}
	}
}

func TestListsNBD(t *testing.T) {
	for _, tc := range []struct {
		dep  string
		want bool
	}{
		{"kernel/drivers/block/nbd.ko.xz:\nkernel/fs/ext4/ext4.ko:\n", true},
		{"updates/nbd.ko:\n", true},
		{"kernel/drivers/block/nbdx.ko:\nkernel/drivers/block/loop.ko:\n", false},
		{"", false},
	} {
		if got := listsNBD(strings.NewReader(tc.dep)); got != tc.want {
			t.Errorf("listsNBD(%q) = %v", tc.dep, got)
		}
	}
}

func TestMountedParts(t *testing.T) {
	mounts := `/dev/sda1 / ext4 rw 0 0
/dev/nbd0p1 /mnt/my\040disk ext4 rw 0 0
/dev/nbd10 /mnt/ten ext4 rw 0 0
/dev/nbd1 /mnt/one xfs rw 0 0
nbd0 /weird tmpfs rw 0 0
`
	for _, tc := range []struct {
		n    int
		want []string
	}{
		{0, []string{"/dev/nbd0p1 on /mnt/my disk"}},
		{1, []string{"/dev/nbd1 on /mnt/one"}},
		{10, []string{"/dev/nbd10 on /mnt/ten"}},
		{2, nil},
	} {
		if got := mountedParts(strings.NewReader(mounts), tc.n); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("nbd%d: %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestHolders(t *testing.T) {
	sys := t.TempDir()
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Join(sys, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk("block/nbd0/holders/md0")
	mk("block/nbd0/nbd0p1/holders/dm-3")
	mk("block/dm-3/dm")
	os.WriteFile(filepath.Join(sys, "block/dm-3/dm/name"), []byte("vg-lv\n"), 0o644)
	mk("block/nbd1/holders")
	got := holders(sys, 0)
	want := []Holder{{Of: "/dev/nbd0", Name: "md0"}, {Of: "/dev/nbd0p1", Name: "dm-3", DM: "vg-lv"}}
	if !slices.Equal(got, want) {
		t.Fatalf("holders %+v, want %+v", got, want)
	}
	for i, w := range []string{"mdadm /dev/md0 --fail /dev/nbd0 --remove /dev/nbd0", "dmsetup remove vg-lv"} {
		if !strings.Contains(got[i].String(), w) {
			t.Errorf("%q does not say %q", got[i], w)
		}
	}
	if h := holders(sys, 1); len(h) != 0 {
		t.Errorf("an unheld device: %v", h)
	}
}
