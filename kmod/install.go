package kmod

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// sameFile reports whether a and b exist with equal contents.
func sameFile(a, b string) bool {
	x, err1 := os.ReadFile(a)
	y, err2 := os.ReadFile(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

// depmodKnows reports whether modules.dep of rel lists updates/nbd.ko.
func depmodKnows(root, rel string) bool {
	dep, err := os.ReadFile(filepath.Join(root, "lib/modules", rel, "modules.dep"))
	return err == nil && strings.Contains(string(dep), "updates/nbd.ko:")
}

// modprobeConf is written unless the user has an nbd.conf: without
// max_part, partitions of /dev/nbdN never appear.
const modprobeConf = "# Written by nbdlab kmod build. Without max_part, /dev/nbdNpM never appear.\noptions nbd nbds_max=16 max_part=8\n"

func (b *builder) install(ctx context.Context, t *Target, ko string) error {
	root := b.o.Prefix
	if root == "" {
		root = "/"
	}
	dir := filepath.Join(root, "lib/modules", t.Release, "updates")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("kmod: install: %w", err)
	}
	dest := filepath.Join(dir, "nbd.ko")
	b.res.Module = dest
	if sameFile(ko, dest) && depmodKnows(root, t.Release) {
		b.steps.Printf("%s is already this very module and depmod lists it; nothing to install", dest)
		return b.configure(ctx, t, root)
	}
	if err := copyFile(ko, dest); err != nil {
		return fmt.Errorf("kmod: install: %w", err)
	}
	b.steps.Printf("installed %s", dest)
	depmod := []string{"-a"}
	if b.o.Prefix != "" {
		depmod = append(depmod, "-b", b.o.Prefix)
	}
	if err := b.runLogged(ctx, "", "depmod", append(depmod, t.Release)...); err != nil {
		return fmt.Errorf("kmod: depmod for %s: %w", t.Release, err)
	}
	b.steps.Printf("depmod -a %s", t.Release)
	return b.configure(ctx, t, root)
}

// configure writes modprobe.d/nbd.conf unless there is one, and loads the
// module into the running kernel.
func (b *builder) configure(ctx context.Context, t *Target, root string) error {
	conf := filepath.Join(root, "etc/modprobe.d/nbd.conf")
	if _, err := os.Stat(conf); err == nil {
		b.steps.Printf("keeping your %s", conf)
	} else {
		if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
			return fmt.Errorf("kmod: %w", err)
		}
		if err := os.WriteFile(conf, []byte(modprobeConf), 0o644); err != nil {
			return fmt.Errorf("kmod: %w", err)
		}
		b.steps.Printf("wrote %s (nbds_max=16 max_part=8)", conf)
	}
	if t.Running && b.o.Prefix == "" {
		if err := b.runLogged(ctx, "", "modprobe", "nbd"); err != nil {
			return fmt.Errorf("kmod: modprobe nbd: %w", err)
		}
		b.steps.Printf("modprobe nbd: loaded")
	}
	return nil
}
