package vm_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/vm"
)

func TestCompareReleases(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"6.12.117+deb12-amd64", "6.1.0-56-amd64", 1},
		{"6.1.0-56-amd64", "6.1.0-9-amd64", 1},
		{"6.1.0-9-amd64", "6.1.0-56-amd64", -1},
		{"5.15.0-91-generic", "5.15.0-91-generic", 0},
	}
	for _, tt := range tests {
		got := vm.CompareReleases(tt.a, tt.b)
		if (got > 0) != (tt.want > 0) || (got < 0) != (tt.want < 0) {
			t.Errorf("CompareReleases(%q, %q) = %d, want sign %d", tt.a, tt.b, got, tt.want)
		}
	}
}

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
	k := vm.Kernel{Release: "test", Image: "/nonexistent", Modules: dir}
	exe, _ := os.Executable()
	_, err := vm.Initramfs(k, exe, t.TempDir())
	if err == nil {
		t.Fatal("initramfs built without the 9p modules")
	}
	if want := "module virtio_pci is neither in " + dir + "/modules.dep nor built in"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q, want it to say %q", err, want)
	}
}

func TestCPIORoundTrip(t *testing.T) {
	files := []vm.CPIOFile{
		{Name: "init", Mode: vm.ModeRegular | 0o755, Data: []byte("#!/bin/true\n")},
		{Name: "dev", Mode: vm.ModeDir | 0o755},
		{Name: "modules/a.ko", Mode: vm.ModeRegular | 0o644, Data: bytes.Repeat([]byte{7}, 5)},
	}
	var a, b bytes.Buffer
	if err := vm.WriteCPIO(&a, files); err != nil {
		t.Fatal(err)
	}
	vm.WriteCPIO(&b, []vm.CPIOFile{files[2], files[0], files[1]})
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("archive depends on input order; want reproducible bytes")
	}
	if a.Len()%4 != 0 {
		t.Fatalf("archive length %d not 4-aligned", a.Len())
	}
	got, err := vm.ReadCPIO(&a)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Name != "dev" || string(got[1].Data) != "#!/bin/true\n" || got[2].Mode != vm.ModeRegular|0o644 {
		t.Fatalf("round trip: %+v", got)
	}
}

func FuzzReadCPIO(f *testing.F) {
	var seed bytes.Buffer
	vm.WriteCPIO(&seed, []vm.CPIOFile{{Name: "x", Mode: vm.ModeRegular | 0o644, Data: []byte("abc")}})
	f.Add(seed.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		files, err := vm.ReadCPIO(bytes.NewReader(data))
		if err != nil {
			return
		}
		// What reads must write and read back the same.
		var out bytes.Buffer
		if err := vm.WriteCPIO(&out, files); err != nil {
			return // names the writer refuses, such as absolute ones
		}
		again, err := vm.ReadCPIO(&out)
		if err != nil || len(again) != len(files) {
			t.Fatalf("re-read: %v, %d files, want %d", err, len(again), len(files))
		}
	})
}
