package imagelock

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Holder is a process that has an image open.
type Holder struct {
	Pid     int
	Command string
}

func (h Holder) String() string {
	if h.Command == "" {
		return fmt.Sprintf("pid %d", h.Pid)
	}
	return fmt.Sprintf("pid %d %s", h.Pid, h.Command)
}

// Holders lists the processes, other than the open file f itself, that
// have f's file open, as fuser does: from /proc/PID/fd. An OFD lock does
// not record its owner's pid (F_OFD_GETLK and /proc/locks give -1), so
// every process with the file open is named; processes this one may not
// look into are left out.
func Holders(f *os.File) []Holder {
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	want, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	self, selfFd := os.Getpid(), int(f.Fd())
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []Holder
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", p.Name(), "fd")
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if n, _ := strconv.Atoi(fd.Name()); pid == self && n == selfFd {
				continue
			}
			var s syscall.Stat_t
			if syscall.Stat(filepath.Join(dir, fd.Name()), &s) != nil || s.Dev != want.Dev || s.Ino != want.Ino {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
			out = append(out, Holder{Pid: pid, Command: strings.TrimSpace(string(comm))})
			break
		}
	}
	return out
}
