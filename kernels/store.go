package kernels

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nbdlab/nbdlab/internal/cachedir"
)

// Store is the cache of fetched kernels: one directory per release, with
// its .debs (debs/), its unpacked files (root/) and manifest.json, which
// is written last: a directory without it is an unfinished fetch.
type Store struct {
	Dir string // default the user cache directory's nbdlab/kernels
}

func (s Store) dir() string {
	if s.Dir == "" {
		return cachedir.Dir("kernels")
	}
	return s.Dir
}

// manifest is what a fetch records of a kernel.
type manifest struct {
	Release   string      `json:"release"`
	Origin    string      `json:"origin"` // debian:SUITE
	Mirror    string      `json:"mirror"`
	Version   string      `json:"version"`
	Fetched   time.Time   `json:"fetched"`
	Packages  []debRecord `json:"packages"`
	SourceDeb string      `json:"source_deb,omitempty"` // relative to the kernel's directory
	Missing   []string    `json:"missing,omitempty"`    // what a forced fetch went without
}

type debRecord struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
}

const manifestName = "manifest.json"

// KernelDir returns the directory that holds fetched kernel rel.
func (s Store) KernelDir(rel string) string { return filepath.Join(s.dir(), rel) }

// Get returns the fetched kernel rel, if the store has all of it.
func (s Store) Get(rel string) (Kernel, bool) {
	dir := s.KernelDir(rel)
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	if err != nil {
		return Kernel{}, false
	}
	var m manifest
	if json.Unmarshal(b, &m) != nil || m.Release != rel {
		return Kernel{}, false
	}
	k, err := describe(filepath.Join(dir, "root"), rel)
	if err != nil {
		return Kernel{}, false
	}
	k.Origin, k.Version, k.Fetched = m.Origin, m.Version, m.Fetched
	if m.SourceDeb != "" {
		if p := filepath.Join(dir, m.SourceDeb); firstExisting(p) != "" {
			k.SourceDeb = p
		}
	}
	return k, true
}

// List returns the fetched kernels, newest first.
func (s Store) List() ([]Kernel, error) {
	entries, err := os.ReadDir(s.dir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kernels: %w", err)
	}
	var ks []Kernel
	for _, e := range entries {
		if k, ok := s.Get(e.Name()); ok && e.IsDir() {
			ks = append(ks, k)
		}
	}
	sortNewestFirst(ks)
	return ks, nil
}

func (s Store) writeManifest(m manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(s.KernelDir(m.Release), manifestName)
	if err := os.WriteFile(p+".tmp", append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("kernels: %w", err)
	}
	return os.Rename(p+".tmp", p)
}

// DiskUsage returns the bytes under path (0 if it does not exist).
func DiskUsage(path string) int64 {
	var n int64
	filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// Remove deletes fetched kernel rel and all its files.
func (s Store) Remove(rel string) (int64, error) {
	dir := s.KernelDir(rel)
	if _, err := os.Stat(dir); err != nil {
		return 0, fmt.Errorf("kernels: %s is not fetched (%s)", rel, dir)
	}
	n := DiskUsage(dir)
	return n, os.RemoveAll(dir)
}

// RemoveDebs deletes the .debs of fetched kernel rel that were unpacked,
// keeping the source .deb unless dropSource.
func (s Store) RemoveDebs(rel string, dropSource bool) (int64, error) {
	k, ok := s.Get(rel)
	debs, _ := filepath.Glob(filepath.Join(s.KernelDir(rel), "debs", "*"))
	var n int64
	for _, d := range debs {
		if ok && d == k.SourceDeb && !dropSource {
			continue
		}
		if fi, err := os.Stat(d); err == nil {
			n += fi.Size()
		}
		if err := os.Remove(d); err != nil {
			return n, fmt.Errorf("kernels: %w", err)
		}
	}
	return n, nil
}
