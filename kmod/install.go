package kmod

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

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
	if err := copyFile(ko, dest); err != nil {
		return fmt.Errorf("kmod: install: %w", err)
	}
	b.res.Module = dest
	b.printf("    installed %s", dest)
	depmod := []string{"-a"}
	if b.o.Prefix != "" {
		depmod = append(depmod, "-b", b.o.Prefix)
	}
	if err := b.runLogged(ctx, "", "depmod", append(depmod, t.Release)...); err != nil {
		return fmt.Errorf("kmod: depmod for %s: %w", t.Release, err)
	}
	b.printf("    depmod -a %s", t.Release)
	conf := filepath.Join(root, "etc/modprobe.d/nbd.conf")
	if _, err := os.Stat(conf); err == nil {
		b.printf("    keeping your %s", conf)
	} else {
		if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
			return fmt.Errorf("kmod: %w", err)
		}
		if err := os.WriteFile(conf, []byte(modprobeConf), 0o644); err != nil {
			return fmt.Errorf("kmod: %w", err)
		}
		b.printf("    wrote %s (nbds_max=16 max_part=8)", conf)
	}
	if t.Running && b.o.Prefix == "" {
		if err := b.runLogged(ctx, "", "modprobe", "nbd"); err != nil {
			return fmt.Errorf("kmod: modprobe nbd: %w", err)
		}
		b.printf("    modprobe nbd: loaded")
	}
	return nil
}
