package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmdtest"

	"github.com/nbdlab/nbdlab/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestCLI runs the golden command transcripts in testdata/*.ct against a
// freshly built nbdlab.
func TestCLI(t *testing.T) {
	ts, err := cmdtest.Read("testdata")
	if err != nil {
		t.Fatal(err)
	}
	bin := testenv.Nbdlab(t)
	ts.Commands["nbdlab"] = cmdtest.Program(bin)
	ts.Setup = func(root string) error {
		// A regular file to try to listen on, and a directory to export.
		if err := os.WriteFile(filepath.Join(root, "notasocket"), []byte("keep"), 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, "disk.qcow2"), []byte("QFI\xfb\x00\x00\x00\x03"), 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, "disk.img"), make([]byte, 64<<10), 0o600); err != nil {
			return err
		}
		return os.Mkdir(filepath.Join(root, "adir"), 0o755)
	}
	ts.Run(t, *update)
}

// The version names the module and the Go that built it; a binary built
// from a checkout also names the revision.
func TestVersion(t *testing.T) {
	v := version()
	if !strings.HasPrefix(v, "nbdlab ") || !strings.Contains(v, "go1.") {
		t.Fatalf("version() = %q, want nbdlab VERSION [revision REV] goX.Y", v)
	}
}
