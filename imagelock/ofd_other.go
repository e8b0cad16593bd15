//go:build !linux

package imagelock

import (
	"fmt"
	"os"
)

// Only Linux has OFD locks; elsewhere Lock says so and takes nothing.
const (
	rdlck = 0
	unlck = 2
)

func setlkRange(f *os.File, off, n int64, typ int16) error {
	if typ == unlck {
		return nil
	}
	return fmt.Errorf("%s: lock at byte %d: %w", f.Name(), off, ErrUnsupported)
}

func setlk(f *os.File, off int64, typ int16) error { return setlkRange(f, off, 1, typ) }

func locked(*os.File, int64) (bool, error) { return false, ErrUnsupported }
