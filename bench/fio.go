package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Job is one fio workload.
type Job struct {
	Name  string
	RW    string // fio rw=
	BS    string // fio bs=
	Depth int
}

// ServerJobs returns the workloads of the server benchmark, writes first
// so that the reads that follow find data.
func ServerJobs() []Job {
	return []Job{
		{"4k randwrite QD16", "randwrite", "4k", 16},
		{"1M write QD4", "write", "1M", 4},
		{"4k randread QD16", "randread", "4k", 16},
		{"1M read QD4", "read", "1M", 4},
	}
}

// Result is what fio measured for one job.
type Result struct {
	IOPS     float64
	BW       float64 // bytes per second
	P99      time.Duration
	Bytes    int64
	CPU      time.Duration // server CPU time during the job
	PeakRSS  int64         // server's peak resident set, bytes
	Duration time.Duration
}

// MiBps is the bandwidth in MiB/s.
func (r Result) MiBps() float64 { return r.BW / (1 << 20) }

// CPUPerGiB is the server's CPU seconds per GiB moved.
func (r Result) CPUPerGiB() float64 {
	if r.Bytes == 0 {
		return 0
	}
	return r.CPU.Seconds() / (float64(r.Bytes) / (1 << 30))
}

type fioOutput struct {
	Jobs []struct {
		Read  fioDir `json:"read"`
		Write fioDir `json:"write"`
	} `json:"jobs"`
}

type fioDir struct {
	IOPS    float64 `json:"iops"`
	BW      float64 `json:"bw_bytes"`
	IOBytes int64   `json:"io_bytes"`
	Clat    struct {
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

// RunFio runs job against uri for d and returns fio's figures.
func RunFio(ctx context.Context, dir, uri string, job Job, size int64, d time.Duration) (Result, error) {
	args := []string{
		"--name=" + job.RW, "--ioengine=nbd", "--uri=" + uri,
		"--rw=" + job.RW, "--bs=" + job.BS, "--iodepth=" + strconv.Itoa(job.Depth),
		"--size=" + strconv.FormatInt(size, 10), "--time_based=1",
		"--runtime=" + strconv.Itoa(int(d.Seconds())), "--ramp_time=1",
	}
	r, err := fioJSON(ctx, filepath.Join(dir, "fio.json"), args)
	if err != nil {
		return r, fmt.Errorf("bench: fio %s against %s: %w", job.Name, uri, err)
	}
	return r, nil
}

// fioJSON runs fio with args, its JSON report going to out (fio prints
// other things on stdout), and returns its figures.
func fioJSON(ctx context.Context, out string, args []string) (Result, error) {
	args = append(args, "--output-format=json", "--output="+out)
	cmd := exec.CommandContext(ctx, "fio", args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return Result{}, fmt.Errorf("fio %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return Result{}, fmt.Errorf("bench: fio output: %w", err)
	}
	return parseFio(b)
}

func parseFio(b []byte) (Result, error) {
	var fo fioOutput
	if err := json.Unmarshal(b, &fo); err != nil {
		return Result{}, fmt.Errorf("bench: parse fio JSON: %w", err)
	}
	if len(fo.Jobs) == 0 {
		return Result{}, fmt.Errorf("bench: fio JSON has no jobs")
	}
	var r Result
	for _, d := range []fioDir{fo.Jobs[0].Read, fo.Jobs[0].Write} {
		if d.IOBytes == 0 {
			continue
		}
		r.IOPS += d.IOPS
		r.BW += d.BW
		r.Bytes += d.IOBytes
		if p := time.Duration(d.Clat.Percentile["99.000000"]); p > r.P99 {
			r.P99 = p
		}
	}
	if r.Bytes == 0 {
		return r, fmt.Errorf("bench: fio moved no data")
	}
	return r, nil
}
