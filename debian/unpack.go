package debian

import (
	"context"
	"fmt"
	"os"
)

// Unpack extracts a .deb's files into dir with dpkg-deb, as dpkg would
// install them under dir as root, without running any maintainer script.
func (a *Archive) Unpack(ctx context.Context, deb, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("debian: %w", err)
	}
	if err := a.run()(ctx, "", nil, nil, "dpkg-deb", "-x", deb, dir); err != nil {
		return fmt.Errorf("debian: unpack %s into %s: %w", deb, dir, err)
	}
	return nil
}
