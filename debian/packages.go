package debian

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ulikunitz/xz"
)

// Package is one binary package of a Packages index.
type Package struct {
	Name, Version, Source, Arch string
	Depends                     [][]Dep
	Filename                    string // path in the pool, relative to the mirror
	Size                        int64
	SHA256                      string
}

// Index is a suite's Packages index, by package name. A name may appear
// at several versions.
type Index struct {
	Suite    string
	Packages map[string][]Package
}

// Find returns name at version, or at its newest version when version is
// "".
func (ix *Index) Find(name, version string) (Package, bool) {
	var best Package
	found := false
	for _, p := range ix.Packages[name] {
		if version != "" {
			if p.Version == version {
				return p, true
			}
			continue
		}
		if !found || CompareVersions(p.Version, best.Version) > 0 {
			best, found = p, true
		}
	}
	return best, found
}

// Names returns the package names that start with prefix.
func (ix *Index) Names(prefix string) []string {
	var out []string
	for n := range ix.Packages {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// indexLimit bounds a decompressed Packages index (sid's is ~65 MB).
const indexLimit = 1 << 30

// Packages fetches and parses the Packages index of component and arch
// (main, amd64) that r lists, keeping the packages whose names start with
// one of prefixes (all when none are given).
func (a *Archive) Packages(ctx context.Context, r *Release, component, arch string, prefixes ...string) (*Index, error) {
	base := component + "/binary-" + arch + "/Packages"
	var name string
	var sum FileSum
	for _, ext := range []string{".gz", ".xz", ""} {
		if s, ok := r.Files[base+ext]; ok {
			name, sum = base+ext, s
			break
		}
	}
	if name == "" {
		return nil, fmt.Errorf("debian: the Release of %s lists no %s index", r.name, base)
	}
	data, err := a.index(ctx, r, name, sum)
	if err != nil {
		return nil, err
	}
	var rd io.Reader = bytes.NewReader(data)
	switch {
	case strings.HasSuffix(name, ".gz"):
		zr, err := gzip.NewReader(rd)
		if err != nil {
			return nil, fmt.Errorf("debian: %s of %s: %w", name, r.name, err)
		}
		rd = zr
	case strings.HasSuffix(name, ".xz"):
		zr, err := xz.NewReader(rd)
		if err != nil {
			return nil, fmt.Errorf("debian: %s of %s: %w", name, r.name, err)
		}
		rd = zr
	}
	ix := &Index{Suite: r.name, Packages: map[string][]Package{}}
	err = ParseStanzas(io.LimitReader(rd, indexLimit), func(s Stanza) error {
		n := s["Package"]
		if len(prefixes) > 0 && !hasAnyPrefix(n, prefixes) {
			return nil
		}
		p, err := packageOf(s)
		if err != nil {
			return fmt.Errorf("package %s: %w", n, err)
		}
		ix.Packages[n] = append(ix.Packages[n], p)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("debian: %s of %s: %w", name, r.name, err)
	}
	return ix, nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func packageOf(s Stanza) (Package, error) {
	p := Package{Name: s["Package"], Version: s["Version"], Arch: s["Architecture"], Filename: s["Filename"],
		SHA256: strings.ToLower(s["SHA256"]), Depends: ParseDepends(s["Depends"])}
	p.Source, _, _ = strings.Cut(s["Source"], " ")
	if p.Source == "" {
		p.Source = p.Name
	}
	size, err := strconv.ParseInt(s["Size"], 10, 64)
	if err != nil || size < 0 {
		return p, fmt.Errorf("bad Size %q", s["Size"])
	}
	p.Size = size
	switch {
	case p.Name == "" || p.Version == "":
		return p, fmt.Errorf("no Package or Version field")
	case len(p.SHA256) != 64:
		return p, fmt.Errorf("no SHA256 field")
	case p.Filename == "" || strings.Contains(p.Filename, "..") || strings.HasPrefix(p.Filename, "/"):
		return p, fmt.Errorf("bad Filename %q", p.Filename)
	}
	return p, nil
}

// index fetches an index file the Release lists, from the cache when a
// file of that hash is there, and checks its size and SHA256.
func (a *Archive) index(ctx context.Context, r *Release, name string, sum FileSum) ([]byte, error) {
	cached := ""
	if a.CacheDir != "" {
		cached = filepath.Join(a.CacheDir, "indexes", sum.SHA256+filepath.Ext(name))
		if b, err := os.ReadFile(cached); err == nil && sha256Hex(b) == sum.SHA256 {
			return b, nil
		}
	}
	dir := "/dists/" + r.name + "/"
	url := a.mirror() + dir + name
	if r.AcquireByHash {
		// By-hash names stay valid while the suite is updated under us.
		url = a.mirror() + dir + filepath.Dir(name) + "/by-hash/SHA256/" + sum.SHA256
	}
	a.progress("fetching %s (%s)", a.mirror()+dir+name, Size(sum.Size))
	b, err := a.get(ctx, url, sum.Size+1) // one more, to see a longer file
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != sum.Size || sha256Hex(b) != sum.SHA256 {
		return nil, fmt.Errorf("debian: %s: %d bytes with sha256 %s, but the signed Release of %s says %d bytes with sha256 %s; refusing it",
			url, len(b), sha256Hex(b), r.name, sum.Size, sum.SHA256)
	}
	if cached != "" {
		if err := os.MkdirAll(filepath.Dir(cached), 0o755); err == nil {
			os.WriteFile(cached+".tmp", b, 0o644)
			os.Rename(cached+".tmp", cached)
		}
	}
	return b, nil
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// Size prints a byte count in binary units, as 1.5 MiB.
func Size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
