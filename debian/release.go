package debian

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/internal/command"
)

// Defaults for an Archive.
const (
	DefaultMirror  = "http://deb.debian.org/debian"
	DefaultKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
)

// Archive is a Debian archive: a mirror and the keyring its InRelease
// files must be signed with. The zero value is Debian's own archive.
type Archive struct {
	Mirror   string // base URL; default DefaultMirror
	Keyring  string // keyring for gpgv; default DefaultKeyring
	CacheDir string // where indexes are kept by hash; "" keeps none
	HTTP     *http.Client
	Run      command.Runner // runs gpgv and dpkg-deb; default command.Exec
	// Progress receives one line per notable event (a download's start
	// and end, a warning); Out, when a terminal, gets progress bars.
	Progress func(format string, args ...any)
	Out      io.Writer
	Now      func() time.Time // default time.Now; tests move the clock
}

func (a *Archive) mirror() string {
	if a.Mirror == "" {
		return DefaultMirror
	}
	return strings.TrimRight(a.Mirror, "/")
}

func (a *Archive) keyring() string {
	if a.Keyring == "" {
		return DefaultKeyring
	}
	return a.Keyring
}

func (a *Archive) run() command.Runner {
	if a.Run == nil {
		return command.Exec
	}
	return a.Run
}

func (a *Archive) client() *http.Client {
	if a.HTTP == nil {
		return http.DefaultClient
	}
	return a.HTTP
}

func (a *Archive) progress(format string, args ...any) {
	if a.Progress != nil {
		a.Progress(format, args...)
	}
}

func (a *Archive) now() time.Time {
	if a.Now == nil {
		return time.Now()
	}
	return a.Now()
}

// FileSum is what a Release says of one index file.
type FileSum struct {
	Size   int64
	SHA256 string
}

// Release is the signed part of a suite's InRelease.
type Release struct {
	Suite, Codename string
	Date            time.Time
	ValidUntil      time.Time // zero when the Release sets none
	Signer          string    // the key that signed it, as gpgv names it
	Files           map[string]FileSum
	AcquireByHash   bool
	name            string // the suite as asked for
}

// maxInRelease bounds what is read of an InRelease; Debian's are ~200 KiB.
const maxInRelease = 16 << 20

// Release fetches dists/SUITE/InRelease, checks its signature and parses
// the signed text.
func (a *Archive) Release(ctx context.Context, suite string) (*Release, error) {
	if suite == "" || strings.ContainsAny(suite, "/ ") {
		return nil, fmt.Errorf("debian: %q is not a suite name (like bookworm, trixie-backports, sid)", suite)
	}
	url := a.mirror() + "/dists/" + suite + "/InRelease"
	body, err := a.get(ctx, url, maxInRelease)
	if errors.Is(err, errNotFound) {
		return nil, fmt.Errorf("debian: the archive %s has no suite %q (%w): Debian's are bookworm, bookworm-backports, trixie, trixie-backports, forky and sid (a code name, or stable, testing, unstable); %s/dists/ lists them", a.mirror(), suite, err, a.mirror())
	}
	if err != nil {
		return nil, err
	}
	signed, signer, err := a.verify(ctx, body)
	if err != nil {
		return nil, fmt.Errorf("debian: %s: %w", url, err)
	}
	r, err := parseRelease(signed)
	if err != nil {
		return nil, fmt.Errorf("debian: %s: %w", url, err)
	}
	r.Signer, r.name = signer, suite
	if !r.ValidUntil.IsZero() && a.now().After(r.ValidUntil) {
		a.progress("WARNING: %s expired on %s (%.0f days ago): the mirror serves an old state of %s; its files are still checked against its signature",
			url, r.ValidUntil.Format("2006-01-02"), a.now().Sub(r.ValidUntil).Hours()/24, suite)
	}
	return r, nil
}

// errNotFound is get's error for a file the mirror does not have.
var errNotFound = errors.New("not found")

// get fetches url whole, at most limit bytes.
func (a *Archive) get(ctx context.Context, url string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("debian: %w", err)
	}
	resp, err := a.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("debian: fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("fetch %s: %s: %w", url, resp.Status, errNotFound)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("debian: fetch %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("debian: fetch %s: %w", url, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("debian: fetch %s: larger than %d bytes", url, limit)
	}
	return b, nil
}

// verify checks a clearsigned file with gpgv and returns the text that was
// signed, and who signed it. As with apt, one good signature by a key of
// the keyring is needed and a bad signature anywhere fails.
func (a *Archive) verify(ctx context.Context, clearsigned []byte) ([]byte, string, error) {
	if _, err := os.Stat(a.keyring()); err != nil {
		return nil, "", fmt.Errorf("archive keyring: %w (install debian-archive-keyring)", err)
	}
	dir, err := os.MkdirTemp("", "nbdlab-gpgv-")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(dir)
	in, out := filepath.Join(dir, "InRelease"), filepath.Join(dir, "signed")
	if err := os.WriteFile(in, clearsigned, 0o600); err != nil {
		return nil, "", err
	}
	var status, stderr bytes.Buffer
	// gpgv writes the status lines to fd 1 when told --status-fd 1, and
	// the signed text, without its armour, to --output.
	runErr := a.run()(ctx, dir, &status, &stderr, "gpgv", "--status-fd", "1", "--keyring", a.keyring(), "--output", out, in)
	signer := ""
	for _, l := range strings.Split(status.String(), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "[GNUPG:]" {
			continue
		}
		switch f[1] {
		case "BADSIG", "ERRSIG", "EXPKEYSIG", "REVKEYSIG":
			if f[1] == "ERRSIG" && len(f) > 7 && f[7] == "9" {
				continue // no public key: another key's signature
			}
			return nil, "", fmt.Errorf("signature check failed (%s): %s", strings.Join(f[1:], " "), oneLine(stderr.String()))
		case "GOODSIG":
			if signer == "" {
				signer = strings.Join(f[3:], " ")
			}
		}
	}
	if signer == "" {
		if runErr != nil {
			return nil, "", fmt.Errorf("no good signature by a key of %s: %s: %w", a.keyring(), oneLine(stderr.String()), runErr)
		}
		return nil, "", fmt.Errorf("no good signature by a key of %s", a.keyring())
	}
	signed, err := os.ReadFile(out)
	if err != nil {
		return nil, "", fmt.Errorf("gpgv wrote no signed text: %w", err)
	}
	return signed, signer, nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// parseRelease reads a Release's fields and its SHA256 file list.
func parseRelease(b []byte) (*Release, error) {
	var st Stanza
	if err := ParseStanzas(bytes.NewReader(b), func(s Stanza) error {
		if st == nil {
			st = s
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if st == nil {
		return nil, fmt.Errorf("empty Release")
	}
	r := &Release{Suite: st["Suite"], Codename: st["Codename"], Files: map[string]FileSum{}, AcquireByHash: st["Acquire-By-Hash"] == "yes"}
	for _, f := range []struct {
		name string
		t    *time.Time
	}{{"Date", &r.Date}, {"Valid-Until", &r.ValidUntil}} {
		if v := st[f.name]; v != "" {
			t, err := time.Parse(time.RFC1123, strings.Replace(v, "UTC", "GMT", 1))
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", f.name, v, err)
			}
			*f.t = t
		}
	}
	sums := st["SHA256"]
	if sums == "" {
		return nil, fmt.Errorf("the Release has no SHA256 list")
	}
	for _, l := range strings.Split(sums, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 || len(f[0]) != 64 {
			return nil, fmt.Errorf("bad SHA256 line %q", trim(l))
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || size < 0 {
			return nil, fmt.Errorf("bad size in SHA256 line %q", trim(l))
		}
		r.Files[f[2]] = FileSum{Size: size, SHA256: strings.ToLower(f[0])}
	}
	return r, nil
}
