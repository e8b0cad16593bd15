package vm

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"
)

// The host and the guest init talk over one virtio-serial port in frames:
// a type byte, a 32-bit big-endian length and the payload. One port keeps
// the order of everything the guest says, so the exit status can never
// overtake the last bytes of output.
const (
	frameConfig = 'c' // host -> guest: JSON guestConfig
	frameAck    = 'a' // host -> guest: exit status received, power off
	frameHello  = 'h' // guest -> host: init is running
	frameStdout = 'o' // guest -> host: command output
	frameStderr = 'e'
	frameInit   = 'i' // guest -> host: a message of the init itself
	frameExit   = 'x' // guest -> host: decimal exit status; the last frame
	maxFrame    = 1 << 20
)

// portName is the virtio-serial port's name.
const portName = "org.nbdlab.0"

type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (fw *frameWriter) send(typ byte, p []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for len(p) > 0 || typ != 0 {
		n := min(len(p), maxFrame)
		var h [5]byte
		h[0] = typ
		binary.BigEndian.PutUint32(h[1:], uint32(n))
		if _, err := fw.w.Write(append(h[:], p[:n]...)); err != nil {
			return err
		}
		p = p[n:]
		if len(p) == 0 {
			break
		}
	}
	return nil
}

// streamWriter sends everything written to it as frames of one type.
type streamWriter struct {
	fw  *frameWriter
	typ byte
}

func (s streamWriter) Write(p []byte) (int, error) {
	if err := s.fw.send(s.typ, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("vm: %d-byte frame", n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	return h[0], p, nil
}

// guestConfig is what the guest init needs to know to run the command.
type guestConfig struct {
	Args   []string
	Env    []string
	Dir    string
	Shares []guestShare
	// Release and Modules: when the kernel's modules are not the host's
	// /lib/modules/Release (a fetched kernel), the guest mounts Modules there.
	Release, Modules string
	// Merged: the host's stdout and stderr are one file, so the command
	// gets one pipe for both and its output keeps the order it was written
	// in, as on a terminal. Two pipes, read apart, cannot keep that order.
	Merged bool
	// Udev starts systemd-udevd and settles the devices there are before
	// the command runs.
	Udev bool
}

type guestShare struct {
	Tag  string
	Path string
}
