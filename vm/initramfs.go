package vm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nbdlab/nbdlab/cpio"
	"github.com/nbdlab/nbdlab/kernels"
)

// GuestModules returns the modules the guest init loads before it can
// reach the host: virtio transport and console, 9p and overlayfs. Their
// dependencies come from the kernel's modules.dep.
func GuestModules() []string {
	return []string{"virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay"}
}

// Initramfs builds, or finds in cacheDir, the initramfs for kernel k with
// init as /init. The archive is reproducible and named by the hash of its
// contents, so equal inputs share one file and concurrent builders agree.
func Initramfs(k kernels.Kernel, init, cacheDir string) (string, error) {
	md, err := ReadModuleDeps(k.Modules)
	if err != nil {
		return "", err
	}
	order, err := md.LoadOrder(GuestModules()...)
	if err != nil {
		return "", err
	}
	files, err := initFiles(init)
	if err != nil {
		return "", err
	}
	for _, d := range []string{"dev", "proc", "sys", "lower", "overlay", "newroot", initModules} {
		files = append(files, cpio.File{Name: d, Mode: cpio.ModeDir | 0o755})
	}
	var names []string
	for _, rel := range order {
		data, err := os.ReadFile(filepath.Join(k.Modules, rel))
		if err != nil {
			return "", fmt.Errorf("vm: read module: %w", err)
		}
		names = append(names, filepath.Base(rel))
		files = append(files, cpio.File{Name: initModules + "/" + filepath.Base(rel), Mode: cpio.ModeRegular | 0o644, Data: data})
	}
	files = append(files, cpio.File{Name: initOrder, Mode: cpio.ModeRegular | 0o644, Data: []byte(strings.Join(names, "\n") + "\n")})
	var buf bytes.Buffer
	if err := cpio.Write(&buf, files); err != nil {
		return "", err
	}
	sum := sha256.Sum256(buf.Bytes())
	path := filepath.Join(cacheDir, "initramfs-"+hex.EncodeToString(sum[:12])+".cpio")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("vm: cache: %w", err)
	}
	tmp, err := os.CreateTemp(cacheDir, "initramfs-*.tmp")
	if err != nil {
		return "", fmt.Errorf("vm: cache: %w", err)
	}
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", fmt.Errorf("vm: write initramfs: %w", err)
	}
	tmp.Close()
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("vm: cache: %w", err)
	}
	return path, nil
}
