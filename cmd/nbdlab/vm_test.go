//go:build vm

package main

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/kernels"
	"github.com/nbdlab/nbdlab/vm/vmtest"
)

// TestIntegrationVMRunCLI is the lab-VM acceptance check, through the CLI:
// stdout and stderr arrive apart and the guest's exit status is nbdlab's.
func TestIntegrationVMRunCLI(t *testing.T) {
	vmtest.Kernels(t)
	newest, err := kernels.Find("", "", kernels.Store{}) // the default: the newest installed
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testenv.Nbdlab(t), "vm", "run", "--timeout", "3m", "--", "sh", "-c", "uname -r; echo err >&2; exit 7")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("exit: %v, want status 7; stderr:\n%s", err, stderr.String())
	}
	if got := strings.TrimSpace(stdout.String()); got != newest.Release {
		t.Errorf("stdout %q, want %q", got, newest.Release)
	}
	if stderr.String() != "err\n" {
		t.Errorf("stderr %q, want %q", stderr.String(), "err\n")
	}
}
