//go:build vm

package kmod_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/kernels"
	"github.com/nbdlab/nbdlab/kmod"
)

// TestCheckShape compares each nbd.ko nbdlab built with its own
// distribution's nbd.ko (agrees), and the newest kernel's with the
// oldest's, whose struct module differs (must not agree).
func TestCheckShape(t *testing.T) {
	ks, err := kernels.All(kernels.Store{})
	if err != nil {
		t.Fatal(err)
	}
	type built struct {
		k            kernels.Kernel
		ours, distro string
	}
	var bs []built
	for _, k := range ks {
		ours, _ := filepath.Glob(filepath.Join(k.Modules, "updates/nbd.ko*"))
		distro, _ := filepath.Glob(filepath.Join(k.Modules, "kernel/drivers/block/nbd.ko*"))
		if len(ours) == 1 && len(distro) == 1 {
			bs = append(bs, built{k, ours[0], distro[0]})
		}
	}
	if len(bs) < 2 {
		testenv.Missing(t, "fewer than two kernels with both nbdlab's and the distribution's nbd.ko (go run mage.go kernels)")
	}
	for _, b := range bs {
		msg, err := kmod.CheckShape(b.ours, b.distro, b.k.Symvers)
		if err != nil {
			t.Errorf("%s: its own distribution's module: %v", b.k.Release, err)
			continue
		}
		t.Logf("%s: %s", b.k.Release, msg)
	}
	newest, oldest := bs[0], bs[len(bs)-1]
	_, err = kmod.CheckShape(newest.ours, oldest.distro, oldest.k.Symvers)
	if err == nil || !strings.Contains(err.Error(), "struct module is") {
		t.Errorf("%s's nbd.ko against %s's: err = %v, want a struct module mismatch", newest.k.Release, oldest.k.Release, err)
	}
}
