package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbdlab/nbdlab/internal/command"
)

// Workload is one measurement of the NFS comparison on a mounted
// filesystem. Its figure is a time in seconds (lower is better) or a
// rate (higher is better).
type Workload struct {
	Name string
	What string
	Unit string // "s", "MiB/s" or "IOPS"
	// Cold: the target is mounted afresh, with its caches dropped
	// (hostRun.cool), before it runs.
	Cold bool
	run  func(w *wenv) (float64, error)
}

// HigherIsBetter reports whether a larger figure is a better one.
func (w Workload) HigherIsBetter() bool { return w.Unit != "s" }

// wenv is what a workload runs against.
type wenv struct {
	ctx     context.Context
	dir     string // the mounted filesystem
	tarball string // the source tree to untar
	files   int    // regular files in the tarball
	fioSize int64  // bytes of the sequential file
	fioTime time.Duration
	small   int // files of the create+fsync workload
}

func (w *wenv) seqFile() string { return filepath.Join(w.dir, "seq.dat") }

// Workloads are the NFS comparison's workloads, in the order they run:
// each leaves what the next one reads (the sequential file, the tree).
// They follow the matrix of the classic block-against-file comparison:
// bulk data, random I/O within a file, and metadata-heavy work.
func Workloads() []Workload {
	return []Workload{
		{Name: "seq-write-direct", What: "fio sequential 1M writes, O_DIRECT, QD4", Unit: "MiB/s", run: func(w *wenv) (float64, error) {
			r, err := w.fio("write", "1M", 4, true, false)
			return r.MiBps(), err
		}},
		{Name: "seq-read-direct", What: "fio sequential 1M reads, O_DIRECT, QD4", Unit: "MiB/s", Cold: true, run: func(w *wenv) (float64, error) {
			r, err := w.fio("read", "1M", 4, true, false)
			return r.MiBps(), err
		}},
		{Name: "seq-write-buffered", What: "sequential 1M writes through the page cache, then fsync (wall clock)", Unit: "MiB/s", run: func(w *wenv) (float64, error) {
			return w.bufferedWrite()
		}},
		{Name: "seq-read-buffered", What: "sequential 1M reads through the page cache, cold (wall clock)", Unit: "MiB/s", Cold: true, run: func(w *wenv) (float64, error) {
			return w.bufferedRead()
		}},
		{Name: "rand-read-4k", What: "fio 4k random reads in the file, O_DIRECT, QD16", Unit: "IOPS", run: func(w *wenv) (float64, error) {
			r, err := w.fio("randread", "4k", 16, true, true)
			return r.IOPS, err
		}},
		{Name: "rand-write-4k", What: "fio 4k random writes in the file, O_DIRECT, QD16, fsync at the end", Unit: "IOPS", run: func(w *wenv) (float64, error) {
			r, err := w.fio("randwrite", "4k", 16, true, true)
			return r.IOPS, err
		}},
		{Name: "untar", What: "tar -x of a source tree, then syncfs", Unit: "s", run: func(w *wenv) (float64, error) {
			return w.timed(func() error {
				if err := command.Exec(w.ctx, "", nil, nil, "tar", "-xf", w.tarball, "-C", w.dir); err != nil {
					return err
				}
				return w.syncfs()
			})
		}},
		{Name: "find-cold", What: "find over the tree, remounted with its caches dropped", Unit: "s", Cold: true, run: func(w *wenv) (float64, error) {
			return w.timed(func() error {
				out, err := exec.CommandContext(w.ctx, "find", filepath.Join(w.dir, "tree"), "-type", "f").Output()
				if err != nil {
					return fmt.Errorf("find: %w", err)
				}
				if n := strings.Count(string(out), "\n"); n != w.files {
					return fmt.Errorf("find saw %d files, the tree has %d", n, w.files)
				}
				return nil
			})
		}},
		{Name: "ls-lR-cold", What: "ls -lR of the tree, remounted with its caches dropped", Unit: "s", Cold: true, run: func(w *wenv) (float64, error) {
			return w.timed(func() error { return command.Exec(w.ctx, "", nil, nil, "ls", "-lR", filepath.Join(w.dir, "tree")) })
		}},
		{Name: "small-files-fsync", What: "create 4 KiB files, each written and fsynced", Unit: "s", run: func(w *wenv) (float64, error) {
			return w.timed(w.smallFiles)
		}},
		{Name: "rm-rf", What: "rm -rf of the tree, then syncfs", Unit: "s", run: func(w *wenv) (float64, error) {
			return w.timed(func() error {
				if err := command.Exec(w.ctx, "", nil, nil, "rm", "-rf", filepath.Join(w.dir, "tree"), filepath.Join(w.dir, "small")); err != nil {
					return err
				}
				return w.syncfs()
			})
		}},
	}
}

// fio runs one fio job on the sequential file; timed jobs run for
// fioTime, the others move the whole file once.
func (w *wenv) fio(rw, bs string, depth int, direct, timed bool) (Result, error) {
	args := []string{"--name=" + rw, "--filename=" + w.seqFile(), "--rw=" + rw, "--bs=" + bs,
		"--size=" + strconv.FormatInt(w.fioSize, 10), "--ioengine=libaio", "--iodepth=" + strconv.Itoa(depth),
		"--direct=" + map[bool]string{true: "1", false: "0"}[direct], "--end_fsync=1"}
	if timed {
		args = append(args, "--time_based=1", "--runtime="+strconv.Itoa(int(w.fioTime.Seconds())))
	}
	return fioJSON(w.ctx, filepath.Join(os.TempDir(), "nbdlab-bench-fio.json"), args)
}

func (w *wenv) bufferedWrite() (float64, error) {
	f, err := os.Create(w.seqFile())
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	start := time.Now()
	for n := int64(0); n < w.fioSize; n += int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return float64(w.fioSize) / (1 << 20) / time.Since(start).Seconds(), f.Close()
}

func (w *wenv) bufferedRead() (float64, error) {
	f, err := os.Open(w.seqFile())
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	start := time.Now()
	var n int64
	for {
		m, err := f.Read(buf)
		n += int64(m)
		if err != nil || m == 0 {
			break
		}
	}
	if n != w.fioSize {
		return 0, fmt.Errorf("read %d bytes of %s, want %d", n, w.seqFile(), w.fioSize)
	}
	return float64(n) / (1 << 20) / time.Since(start).Seconds(), nil
}

func (w *wenv) smallFiles() error {
	dir := filepath.Join(w.dir, "small")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for i := range w.small {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%05d", i)))
		if err != nil {
			return err
		}
		_, err = f.Write(buf)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (w *wenv) timed(f func() error) (float64, error) {
	start := time.Now()
	err := f()
	return time.Since(start).Seconds(), err
}

func (w *wenv) syncfs() error {
	f, err := os.Open(w.dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", w.dir, err)
	}
	return nil
}
