package kmod

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nbdlab/nbdlab/internal/cachedir"
	"github.com/nbdlab/nbdlab/kernels"
)

// Fetched builds from the source of a kernel nbdlab kernel fetch brought
// into the cache: its linux-source .deb, checked when it was fetched, and
// the Module.symvers of its headers.
type Fetched struct{ Kernel kernels.Kernel }

// Name implements Provider.
func (Fetched) Name() string { return "fetched" }

// Fetch implements Provider: it unpacks the kept source .deb, once.
func (f Fetched) Fetch(ctx context.Context, env *Env, t *Target) (*Source, error) {
	k := f.Kernel
	if k.SourceDeb == "" {
		return nil, fmt.Errorf("kmod: kernel %s was fetched without its source (forced, or pruned); fetch it again: nbdlab kernel prune %s && nbdlab kernel fetch %s/%s",
			k.Release, k.Release, k.Origin, k.Release)
	}
	if k.Symvers == "" {
		return nil, fmt.Errorf("kmod: kernel %s was fetched without its headers, so there is no Module.symvers; fetch it again: nbdlab kernel prune %s && nbdlab kernel fetch %s/%s",
			k.Release, k.Release, k.Origin, k.Release)
	}
	dir := sourceDir(env.CacheDir, k.Release)
	if isComplete(dir) {
		env.Progress("reusing unpacked source %s", dir)
	} else if err := unpackDebSource(ctx, env, k.SourceDeb, dir); err != nil {
		return nil, err
	}
	top, err := findTreeTop(dir)
	if err != nil {
		return nil, err
	}
	return &Source{Dir: top, What: fmt.Sprintf("%s of %s %s", filepath.Base(k.SourceDeb), k.Origin, k.Version), Symvers: k.Symvers}, nil
}

func sourceDir(cache, rel string) string { return filepath.Join(cache, "src", "fetched_"+rel) }

// cacheParts are the directories of kmod's cache that belong to rel alone.
func cacheParts(rel string) []string {
	cache := cachedir.Dir("kmod")
	parts := []string{sourceDir(cache, rel)}
	builds, _ := filepath.Glob(filepath.Join(cache, "build", rel+"-*"))
	return append(parts, builds...)
}

// CacheUsage returns the bytes kmod's cache holds for kernel rel alone:
// an unpacked fetched source and the prepared build directories.
func CacheUsage(rel string) int64 {
	var n int64
	for _, p := range cacheParts(rel) {
		n += kernels.DiskUsage(p)
	}
	return n
}

// RemoveCache deletes what CacheUsage counts and returns the bytes freed.
func RemoveCache(rel string) int64 {
	n := CacheUsage(rel)
	for _, p := range cacheParts(rel) {
		os.RemoveAll(p)
	}
	return n
}
