// Package procfs reads what nbdlab needs of a process from /proc: its
// state, CPU time and peak memory. Linux only.
package procfs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Exe is the path by which this program runs itself again (a background
// holder, serve --fork): the kernel resolves /proc/self/exe to the running
// binary even where the binary's own path cannot be reached, as for
// nbdlab running as a lab VM's init, whose /init lies in the initramfs the
// guest has switched away from (os.Executable says "/init" there), or was
// replaced since it started.
const Exe = "/proc/self/exe"

// clockTick is USER_HZ, 100 on every Linux architecture Go supports.
const clockTick = 100

// Stat is what /proc/PID/stat says of a process.
type Stat struct {
	State byte          // R, S, D, Z, ...
	PPID  int           // the parent's pid
	CPU   time.Duration // user and system time so far
	User  time.Duration // of CPU, the time spent in user space
}

// ReadStat reads /proc/PID/stat.
func ReadStat(pid int) (Stat, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		return Stat{}, err
	}
	return parseStat(path, string(b))
}

// parseStat reads the fields after the command name, which is in
// parentheses and may itself hold spaces and parentheses.
func parseStat(path, s string) (Stat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("procfs: %s: no command name", path)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("procfs: %s: %d fields after the command name, want at least 13", path, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return Stat{}, fmt.Errorf("procfs: %s: utime %q, stime %q", path, f[11], f[12])
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return Stat{}, fmt.Errorf("procfs: %s: ppid %q", path, f[1])
	}
	return Stat{State: f[0][0], PPID: ppid, CPU: ticks(utime + stime), User: ticks(utime)}, nil
}

// ticks converts clock ticks to a duration.
func ticks(n int64) time.Duration {
	return time.Duration(n) * time.Second / clockTick
}

// Stopped reports whether pid cannot run until it is continued: every
// thread stopped (state T), as a SIGSTOP leaves it once it has reached
// each thread, or the process a zombie (state Z), which will never run
// again, such as a child its stopped parent cannot reap.
func Stopped(pid int) bool {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			return false
		}
		st, err := parseStat(t, string(b))
		if err != nil || st.State != 'T' && st.State != 'Z' {
			return false
		}
	}
	return len(tasks) > 0
}

// Alive reports whether pid is a process that has not exited (a zombie
// has).
func Alive(pid int) bool {
	st, err := ReadStat(pid)
	return err == nil && st.State != 'Z' && st.State != 'X'
}

// PeakRSS returns the peak resident set (VmHWM) of pid, in bytes.
func PeakRSS(pid int) (int64, error) {
	kb, err := Status(pid, "VmHWM")
	return kb << 10, err
}

// Status returns the number a field of /proc/PID/status starts with:
// kB for the memory fields (VmRSS, VmHWM), a count for Threads.
func Status(pid int, field string) (int64, error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := parseStatus(path, string(b), field)
	if err != nil {
		return 0, err
	}
	return n[0], nil
}

// parseStatus returns the number each of fields starts with in a status
// file's text, in the order asked.
func parseStatus(path, text string, fields ...string) ([]int64, error) {
	out := make([]int64, len(fields))
	found := 0
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(line, ":")
		i := slices.Index(fields, k)
		if !ok || i < 0 {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			return nil, fmt.Errorf("procfs: %s: %s is empty", path, k)
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("procfs: %s: %s %q: %w", path, k, v, err)
		}
		out[i] = n
		found++
	}
	if found != len(fields) {
		return nil, fmt.Errorf("procfs: %s: want %s, found %d of them", path, strings.Join(fields, ", "), found)
	}
	return out, nil
}

// SystemCPU is the CPU time the whole machine has spent busy (everything
// in the first line of /proc/stat but idle and iowait) since boot, summed
// over CPUs.
func SystemCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseSystemCPU(string(b))
}

func parseSystemCPU(s string) (time.Duration, error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("procfs: /proc/stat: first line %q is not the cpu total", line)
	}
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest and guest_nice are already in user and nice
			break
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("procfs: /proc/stat: field %d %q: %w", i+1, v, err)
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTick, nil
}

// Tree returns pid and every live descendant of it, parents before their
// children: a forking server's connection handlers with it.
func Tree(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := ReadStat(p); err == nil {
			children[st.PPID] = append(children[st.PPID], p)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// CommandCPU sums the CPU time of every process or kernel thread whose
// command name is comm, such as the "nfsd" threads.
func CommandCPU(comm string) (time.Duration, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(b)) != comm {
			continue
		}
		if st, err := ReadStat(pid); err == nil {
			sum += st.CPU
		}
	}
	return sum, nil
}

// Switches are a process's context switches, summed over its threads.
type Switches struct {
	Voluntary   int64 // the thread blocked (a read with nothing to read, a lock, a sleep)
	Involuntary int64 // the scheduler took the CPU away
}

// ReadSwitches sums voluntary_ctxt_switches and nonvoluntary_ctxt_switches
// over the threads of pid (/proc/PID/status counts the first thread's
// alone). Threads that have exited are not counted.
func ReadSwitches(pid int) (Switches, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		return Switches{}, fmt.Errorf("procfs: no threads of process %d", pid)
	}
	var sum Switches
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread exited
		}
		n, err := parseStatus(t, string(b), "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
		if err != nil {
			return Switches{}, err
		}
		sum.Voluntary += n[0]
		sum.Involuntary += n[1]
	}
	return sum, nil
}
