package nbd_test

import (
	"errors"
	"syscall"
	"testing"

	"github.com/nbdlab/nbdlab/nbd"
)

func TestFaultyFailsItsRangeOnly(t *testing.T) {
	spec, err := nbd.ParseExportSpec("d=mem:1M,eio=64K+4K")
	if err != nil {
		t.Fatal(err)
	}
	e, _, err := spec.Open()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for _, tt := range []struct {
		off  int64
		fail bool
	}{{0, false}, {60 << 10, false}, {62 << 10, true}, {64 << 10, true}, {67 << 10, true}, {68 << 10, false}} {
		_, rerr := e.Backend.ReadAt(buf, tt.off)
		_, werr := e.Backend.WriteAt(buf, tt.off)
		for _, err := range []error{rerr, werr} {
			if got := errors.Is(err, syscall.EIO); got != tt.fail {
				t.Errorf("offset %d: err %v, want EIO %v", tt.off, err, tt.fail)
			}
		}
	}
	for _, bad := range []string{"d=mem:1M,eio=64K", "d=mem:1M,eio=x+4K", "d=mem:1M,eio=64K+0"} {
		if _, err := nbd.ParseExportSpec(bad); err == nil {
			t.Errorf("ParseExportSpec(%q) accepted", bad)
		}
	}
}
