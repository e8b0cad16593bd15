package vm_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/kernels"
	"github.com/nbdlab/nbdlab/vm"
)

func writeModules(t *testing.T, dep, builtin string) string {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644)
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644)
	return dir
}

func TestLoadOrder(t *testing.T) {
	// As in Debian's 6.1: 9p needs 9pnet, fscache and netfs; virtio_pci
	// needs the virtio core.
	dir := writeModules(t, `kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
`, "kernel/fs/overlayfs/overlay.ko\n")
	md, err := vm.ReadModuleDeps(dir)
	if err != nil {
		t.Fatal(err)
	}
	order, err := md.LoadOrder("virtio_pci", "9pnet_virtio", "9p", "overlay")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range order {
		names = append(names, vm.ModuleName(p))
	}
	got := strings.Join(names, " ")
	want := "virtio_ring virtio virtio_pci 9pnet 9pnet_virtio netfs fscache 9p"
	if got != want {
		t.Fatalf("load order %q, want %q", got, want)
	}
	if _, err := md.LoadOrder("nbd"); err == nil || !strings.Contains(err.Error(), "module nbd is neither") {
		t.Fatalf("unknown module: %v", err)
	}
}

func TestInitramfsNamesMissingModule(t *testing.T) {
	dir := writeModules(t, "kernel/fs/overlayfs/overlay.ko:\n", "")
	k := kernels.Kernel{Release: "test", Image: "/nonexistent", Modules: dir}
	exe, _ := os.Executable()
	_, err := vm.Initramfs(k, exe, t.TempDir())
	if err == nil {
		t.Fatal("initramfs built without the 9p modules")
	}
	if want := "module virtio_pci is neither in " + dir + "/modules.dep nor built in"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q, want it to say %q", err, want)
	}
}
