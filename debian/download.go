package debian

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// Download fetches p's .deb into dir and returns its path. A complete file
// already there with the right SHA256 is kept; a partial one (.part) is
// resumed. The result has the index's size and SHA256, or is discarded
// with an error.
func (a *Archive) Download(ctx context.Context, p Package, dir string) (string, error) {
	dst := filepath.Join(dir, filepath.Base(p.Filename))
	if got, err := FileSHA256(dst); err == nil && got == p.SHA256 {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("debian: %w", err)
	}
	url := a.mirror() + "/" + p.Filename
	part := dst + ".part"
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", fmt.Errorf("debian: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	have, err := io.Copy(h, f) // hash what an earlier run left
	if err != nil {
		return "", fmt.Errorf("debian: %s: %w", part, err)
	}
	if have > p.Size {
		have, h = 0, sha256.New()
		if err := f.Truncate(0); err != nil {
			return "", fmt.Errorf("debian: %w", err)
		}
		f.Seek(0, io.SeekStart)
	}
	start := time.Now()
	if have > 0 {
		a.progress("resuming %s at %s of %s", p.Filename, Size(have), Size(p.Size))
	} else {
		a.progress("downloading %s %s (%s)", p.Name, p.Version, Size(p.Size))
	}
	if have < p.Size {
		if err := a.fetchRange(ctx, url, f, h, have, p.Size); err != nil {
			return "", err
		}
	}
	got := hex.EncodeToString(h.Sum(nil))
	if got != p.SHA256 {
		f.Close()
		os.Remove(part)
		return "", fmt.Errorf("debian: %s: sha256 %s, but the index says %s; the download was discarded (run again to fetch it anew)", url, got, p.SHA256)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("debian: %w", err)
	}
	if err := os.Rename(part, dst); err != nil {
		return "", fmt.Errorf("debian: %w", err)
	}
	d := time.Since(start)
	a.progress("fetched %s %s: %s in %s (%s/s), sha256 verified", p.Name, p.Version, Size(p.Size),
		d.Round(100*time.Millisecond), Size(int64(float64(p.Size-have)/max(d.Seconds(), 0.001))))
	return dst, nil
}

// fetchRange appends bytes have..size of url to f and h.
func (a *Archive) fetchRange(ctx context.Context, url string, f *os.File, h hash.Hash, have, size int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("debian: %w", err)
	}
	if have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
	}
	resp, err := a.client().Do(req)
	if err != nil {
		return fmt.Errorf("debian: fetch %s: %w (run again to resume)", url, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
	case resp.StatusCode == http.StatusOK:
		if have > 0 { // the server ignored the range: start over
			if err := f.Truncate(0); err != nil {
				return err
			}
			f.Seek(0, io.SeekStart)
			h.Reset()
			have = 0
		}
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("debian: fetch %s: %s: the pool no longer has this file (the suite moved on?)", url, resp.Status)
	default:
		return fmt.Errorf("debian: fetch %s: %s", url, resp.Status)
	}
	var w io.Writer = io.MultiWriter(f, h)
	if bar := a.bar(size, have, filepath.Base(url)); bar != nil {
		defer bar.Finish()
		w = io.MultiWriter(w, bar)
	}
	n, err := io.Copy(w, io.LimitReader(resp.Body, size-have+1))
	switch {
	case err != nil:
		return fmt.Errorf("debian: fetch %s: %w after %s (run again to resume)", url, err, Size(have+n))
	case have+n > size:
		return fmt.Errorf("debian: fetch %s: longer than the index's %d bytes", url, size)
	case have+n < size:
		return fmt.Errorf("debian: fetch %s: %w: %s of %s (run again to resume)", url, io.ErrUnexpectedEOF, Size(have+n), Size(size))
	}
	return nil
}

// bar returns a progress bar on Out when it is a terminal.
func (a *Archive) bar(size, have int64, name string) *progressbar.ProgressBar {
	f, ok := a.Out.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	bar := progressbar.NewOptions64(size, progressbar.OptionSetWriter(f), progressbar.OptionShowBytes(true),
		progressbar.OptionSetDescription(name), progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish())
	bar.Set64(have)
	return bar
}

// FileSHA256 returns the hex SHA256 of a file.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ErrNotListed is wrapped when the index does not list a package asked for.
var ErrNotListed = errors.New("not listed in the index")
