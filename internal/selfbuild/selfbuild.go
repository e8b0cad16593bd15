// Package selfbuild builds the nbdlab command from this source tree as a
// static binary (CGO_ENABLED=0), which can also be a lab VM's init, and
// keeps it in the user cache directory under a name derived from its
// contents, so that identical builds share one file and lab VMs (whose
// /tmp is their own) find it. It needs the go command.
package selfbuild

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/nbdlab/nbdlab/internal/cachedir"
)

// Nbdlab builds nbdlab and returns the path of the cached binary.
func Nbdlab(ctx context.Context) (string, error) {
	tmp, err := os.MkdirTemp("", "nbdlab-build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "nbdlab")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/nbdlab/nbdlab/cmd/nbdlab")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("selfbuild: go build nbdlab: %w\n%s", err, b)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	dir := cachedir.Dir("bin")
	dst := filepath.Join(dir, "nbdlab-"+hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("selfbuild: %w", err)
	}
	part := dst + fmt.Sprintf(".%d.part", os.Getpid())
	if err := os.WriteFile(part, data, 0o755); err != nil {
		return "", fmt.Errorf("selfbuild: %w", err)
	}
	return dst, os.Rename(part, dst)
}
