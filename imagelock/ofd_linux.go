package imagelock

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const (
	rdlck = unix.F_RDLCK
	unlck = unix.F_UNLCK
)

func setlk(f *os.File, off int64, typ int16) error {
	return setlkRange(f, off, 1, typ)
}

func setlkRange(f *os.File, off, n int64, typ int16) error {
	lk := unix.Flock_t{Type: typ, Whence: 0, Start: off, Len: n}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		return lockError(f, "lock", off, err)
	}
	return nil
}

// locked reports whether another open file description holds a lock on
// byte off of f.
func locked(f *os.File, off int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: off, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return false, lockError(f, "test the lock", off, err)
	}
	return lk.Type != unix.F_UNLCK, nil
}

func lockError(f *os.File, what string, off int64, err error) error {
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOLCK) || errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("%s: %s at byte %d: %w (%w)", f.Name(), what, off, ErrUnsupported, err)
	}
	return fmt.Errorf("%s: %s at byte %d: %w", f.Name(), what, off, err)
}
