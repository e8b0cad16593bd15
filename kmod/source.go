package kmod

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/nbdlab/nbdlab/debian"
	"github.com/nbdlab/nbdlab/internal/command"
)

// Source is a kernel source tree ready to build from.
type Source struct {
	Dir     string // top of the tree (has the Makefile)
	What    string // what was fetched, for messages
	Symvers string // KVER's Module.symvers, if the provider has one
}

// Provider fetches the exact source of a kernel release.
type Provider interface {
	Name() string
	Fetch(ctx context.Context, env *Env, t *Target) (*Source, error)
}

// Env is what providers work with.
type Env struct {
	CacheDir string
	Run      command.Runner
	HTTP     *http.Client
	Force    bool // accept a source version that does not match exactly
	Progress func(format string, args ...any)
	// Mirrors override the base URLs providers download from, by provider
	// name; tests point them at a local server.
	Mirrors map[string]string
}

func (e *Env) mirror(name, def string) string {
	if m, ok := e.Mirrors[name]; ok {
		return strings.TrimRight(m, "/")
	}
	return def
}

// ProviderFor picks the provider for a target's distribution.
func ProviderFor(t *Target, local string) (Provider, error) {
	if local != "" {
		return LocalTree{Dir: local}, nil
	}
	switch t.Distro {
	case "debian":
		return Debian{}, nil
	case "ubuntu":
		return Ubuntu{}, nil
	case "rhel":
		return RHEL{}, nil
	case "fedora":
		return Fedora{}, nil
	}
	if KernelOrgRelease(t.Release) {
		return KernelOrg{}, nil
	}
	return nil, fmt.Errorf("kmod: no source provider for kernel %s (distribution %q); give a source tree with --source DIR", t.Release, t.Distro)
}

// LocalTree is a source tree the user already has.
type LocalTree struct{ Dir string }

// Name implements Provider.
func (LocalTree) Name() string { return "local" }

// Fetch implements Provider: it only checks the tree.
func (l LocalTree) Fetch(ctx context.Context, env *Env, t *Target) (*Source, error) {
	if _, err := os.Stat(filepath.Join(l.Dir, "drivers/block/nbd.c")); err != nil {
		return nil, fmt.Errorf("kmod: %s is not a kernel source tree (no drivers/block/nbd.c)", l.Dir)
	}
	abs, _ := filepath.Abs(l.Dir)
	return &Source{Dir: abs, What: "local tree " + abs}, nil
}

// download fetches url into dst unless dst exists with the expected
// sha256 (when given); a mismatch is an error and the file is removed.
func download(ctx context.Context, env *Env, url, dst, sha string) error {
	if sha != "" {
		if got, err := debian.FileSHA256(dst); err == nil && got == sha {
			return nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	client := env.HTTP
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("kmod: download %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("kmod: download %s: %s", url, resp.Status)
	}
	tmp := dst + ".part"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), resp.Body)
	f.Close()
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("kmod: download %s: %w", url, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); sha != "" && got != sha {
		os.Remove(tmp)
		return fmt.Errorf("kmod: download %s: sha256 %s, want %s; the file was discarded", url, got, sha)
	}
	env.Progress("downloaded %s (%d MiB)", url, n>>20)
	return os.Rename(tmp, dst)
}

// complete marks a cache directory as fully written.
const completeMarker = ".nbdlab-complete"

func isComplete(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, completeMarker))
	return err == nil
}

func markComplete(dir string) error {
	return os.WriteFile(filepath.Join(dir, completeMarker), nil, 0o644)
}

// findTreeTop returns the directory under dir that holds the kernel's
// top Makefile: dir itself or its single subdirectory.
func findTreeTop(dir string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "drivers/block/nbd.c")); err == nil {
		return dir, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		sub := filepath.Join(dir, e.Name())
		if _, err := os.Stat(filepath.Join(sub, "drivers/block/nbd.c")); e.IsDir() && err == nil {
			return sub, nil
		}
	}
	return "", fmt.Errorf("kmod: no kernel tree (drivers/block/nbd.c) in %s", dir)
}
