package bench

import "testing"

func TestDiskStat(t *testing.T) {
	before, err := parseDiskStat("     100        0     800      20      50     3    4000    90    0   40   100    0    0    0    0    2    1\n")
	if err != nil {
		t.Fatal(err)
	}
	after, err := parseDiskStat("     110        0    880      25     70     3    14240    99    0   50   120    4    0    2048    3   12    2\n")
	if err != nil {
		t.Fatal(err)
	}
	want := "10 reads of 4 KiB, 20 writes of 256 KiB, 4 discards of 256 KiB, 10 flushes"
	if got := after.sub(before).String(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	old, err := parseDiskStat("1 0 8 0 0 0 0 0 0 0 0\n") // before Linux 4.18
	if err != nil || old.String() != "1 reads of 4 KiB" {
		t.Errorf("an 11-field stat: %q, %v", old.String(), err)
	}
	for _, bad := range []string{"", "1 2 3", "1 0 8 0 x 0 0 0 0 0 0"} {
		if _, err := parseDiskStat(bad); err == nil {
			t.Errorf("parseDiskStat(%q) accepted", bad)
		}
	}
	if got := (diskStat{}).String(); got != "none" {
		t.Errorf("no requests: %q", got)
	}
}
