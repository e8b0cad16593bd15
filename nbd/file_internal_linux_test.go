package nbd

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/nbdlab/nbdlab/imagelock"
)

// openTestFile opens a file export of size zero bytes made in dir; it is
// closed when the test ends.
func openTestFile(t *testing.T, dir string, size int) *File {
	t.Helper()
	path := filepath.Join(dir, "img")
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := OpenFile(path, imagelock.Writer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// Sync calls fdatasync only when something changed since the last Sync
// that succeeded: the first one always (the page cache may hold what
// others wrote before the file was opened), one after a write, trim or
// zeroing, again after one that failed, and never for two in a row.
func TestFileSyncSkipsWhenNothingChanged(t *testing.T) {
	b := openTestFile(t, t.TempDir(), 1<<20)
	calls, fail := 0, false
	fdatasync = func(fd int) error {
		calls++
		if fail {
			return errors.New("injected")
		}
		return nil
	}
	t.Cleanup(func() { fdatasync = realFdatasync })
	steps := []struct {
		name      string
		change    func() error
		fail      bool
		wantCalls int
	}{
		{"first sync", nil, false, 1},
		{"nothing written", nil, false, 1},
		{"after a write", func() error { _, err := b.WriteAt([]byte("x"), 0); return err }, false, 2},
		{"nothing written again", nil, false, 2},
		{"after a trim", func() error { return b.Trim(0, 4096) }, false, 3},
		{"after a zeroing", func() error { return b.Zero(0, 4096, ZeroFlags{}) }, false, 4},
		{"a write, then a failing sync", func() error { _, err := b.WriteAt([]byte("y"), 0); return err }, true, 5},
		{"retried after the failure", nil, false, 6},
		{"and then skipped", nil, false, 6},
	}
	for _, s := range steps {
		if s.change != nil {
			if err := s.change(); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
		}
		fail = s.fail
		err := b.Sync()
		if (err != nil) != s.fail {
			t.Errorf("%s: Sync error %v", s.name, err)
		}
		if calls != s.wantCalls {
			t.Errorf("%s: %d fdatasync calls, want %d", s.name, calls, s.wantCalls)
		}
	}
}

// A file in memory is read and written with raw system calls
// (rawio_linux.go): what is written reads back, a read past the end
// stops with io.EOF as os.File's does, and copies larger than
// rawFileMax take the ordinary path with the same result.
func TestFileInMemoryRaw(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "nbdlab-raw-")
	if err != nil {
		t.Fatal("no /dev/shm:", err)
	}
	defer os.RemoveAll(dir)
	b := openTestFile(t, dir, 4<<20)
	if !b.memory {
		t.Fatal("a file on /dev/shm is not seen as in memory")
	}
	for _, n := range []int{1, 4096, rawFileMax, rawFileMax + 4096} {
		p := bytes.Repeat([]byte{byte(n)}, n)
		if w, err := b.WriteAt(p, 100); err != nil || w != n {
			t.Fatalf("write %d: %d, %v", n, w, err)
		}
		back := make([]byte, n)
		if r, err := b.ReadAt(back, 100); err != nil || r != n || !bytes.Equal(back, p) {
			t.Fatalf("read %d: %d, %v, same %v", n, r, err, bytes.Equal(back, p))
		}
	}
	tail := make([]byte, 8192)
	if n, err := b.ReadAt(tail, 4<<20-4096); n != 4096 || err != io.EOF {
		t.Errorf("read across the end: %d, %v; want 4096, io.EOF", n, err)
	}
}
