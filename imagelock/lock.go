package imagelock

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Right is one of QEMU's access rights on an image, by its bit number.
type Right int

// The rights, numbered as QEMU numbers them; the lock bytes are 100 and
// 200 plus the number.
const (
	ConsistentRead Right = iota
	Write
	WriteUnchanged
	Resize
	numRights
)

const (
	useBase     = 100 // a lock at useBase+i: the holder uses right i
	unshareBase = 200 // a lock at unshareBase+i: the holder lets no one else use right i
)

var rightNames = [numRights]string{"consistent read", "write", "write unchanged", "resize"}

func (r Right) String() string {
	if r >= 0 && r < numRights {
		return rightNames[r]
	}
	return fmt.Sprintf("right(%d)", int(r))
}

// Mode is how an image is opened.
type Mode int

const (
	// Reader reads the image and wants it not to change under it.
	Reader Mode = iota
	// Writer writes the image.
	Writer
	// ForceShare reads the image and lets others write it: no lock is
	// taken or tested.
	ForceShare
)

func (m Mode) String() string {
	switch m {
	case Reader:
		return "read-only"
	case Writer:
		return "read-write"
	case ForceShare:
		return "force-share"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// rights returns what a mode uses and what it does not share.
func (m Mode) rights() (use, unshare []Right) {
	switch m {
	case Writer:
		return []Right{ConsistentRead, Write, Resize}, []Right{Write, Resize}
	case Reader:
		return []Right{ConsistentRead}, []Right{Write, Resize}
	}
	return nil, nil
}

// ErrUnsupported is wrapped by Lock's error where the file's filesystem
// has no OFD locks.
var ErrUnsupported = errors.New("the filesystem does not support OFD locks")

// ConflictError says that another open of the image holds it in a way the
// asked mode cannot share.
type ConflictError struct {
	Path string
	Mode Mode
	// Right is the right in conflict; Held tells which way: true when
	// another holder uses Right, which Mode will not share; false when
	// another holder does not share Right, which Mode uses.
	Right Right
	Held  bool
	// Holders are the other processes that have the image open (pid and
	// command), where /proc tells them.
	Holders []Holder
}

func (e *ConflictError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s is in use: ", e.Path)
	if e.Held {
		fmt.Fprintf(&b, "another process holds its %q lock", e.Right.String())
	} else {
		fmt.Fprintf(&b, "another process does not share its %q lock", e.Right.String())
	}
	if len(e.Holders) > 0 {
		hs := make([]string, len(e.Holders))
		for i, h := range e.Holders {
			hs[i] = h.String()
		}
		fmt.Fprintf(&b, " (open in %s)", strings.Join(hs, ", "))
	}
	fmt.Fprintf(&b, ", so opening it %s could corrupt it or read it torn; stop the other user first", e.Mode)
	if e.Mode == Reader {
		b.WriteString(", or read it as it changes with --force-share")
	}
	return b.String()
}

// Lock takes the locks of mode m on f, after testing that no other open
// of the file conflicts. The locks go with f's open file description.
// On a conflict it returns a *ConflictError and takes nothing.
func Lock(f *os.File, m Mode) error {
	use, unshare := m.rights()
	if len(use) == 0 && len(unshare) == 0 {
		return nil
	}
	// Each right a mode uses is locked at useBase and tested at
	// unshareBase (does anyone refuse to share it?); each it does not
	// share, the other way round (does anyone use it?).
	sides := []struct {
		rights     []Right
		take, test int64
		held       bool // a conflict found here: another holder uses the right
	}{{use, useBase, unshareBase, false}, {unshare, unshareBase, useBase, true}}
	// Take first, then test, as QEMU does: two processes that start at
	// once then see each other's locks, and at least one of them fails.
	for _, side := range sides {
		for _, r := range side.rights {
			if err := setlk(f, side.take+int64(r), rdlck); err != nil {
				return unlockAfter(f, err)
			}
		}
	}
	for _, side := range sides {
		for _, r := range side.rights {
			busy, err := locked(f, side.test+int64(r))
			if err != nil {
				return unlockAfter(f, err)
			}
			if busy {
				return unlockAfter(f, &ConflictError{Path: f.Name(), Mode: m, Right: r, Held: side.held, Holders: Holders(f)})
			}
		}
	}
	return nil
}

// Unlock gives back every lock Lock took on f (closing f does too).
func Unlock(f *os.File) error {
	for _, base := range []int64{useBase, unshareBase} {
		if err := setlkRange(f, base, int64(numRights), unlck); err != nil {
			return err
		}
	}
	return nil
}

func unlockAfter(f *os.File, err error) error {
	Unlock(f) // only gives back; an error here adds nothing to err
	return err
}

// Open opens the file at path for mode (read-write for Writer, else
// read-only) and takes mode's locks, which go when the file is closed. A
// file whose filesystem has no OFD locks is opened without them, as QEMU's
// locking=auto does; a conflict closes the file and returns the
// *ConflictError.
func Open(path string, m Mode) (*os.File, error) {
	flag := os.O_RDONLY
	if m == Writer {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	if err := Lock(f, m); err != nil && !errors.Is(err, ErrUnsupported) {
		f.Close()
		return nil, err
	}
	return f, nil
}
