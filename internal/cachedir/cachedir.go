// Package cachedir names nbdlab's cache directories: under the user cache
// directory ($XDG_CACHE_HOME or ~/.cache), or /var/cache when the
// environment names no home, as under some CI runners and init systems.
package cachedir

import (
	"os"
	"path/filepath"
)

// Dir returns the cache directory for part (kmod, vm, bin) of nbdlab.
func Dir(part string) string {
	base, err := os.UserCacheDir()
	if err != nil {
		base = "/var/cache"
	}
	return filepath.Join(base, "nbdlab", part)
}
