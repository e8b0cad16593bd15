package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// diskStat is a block device's request counters from
// /sys/block/DEV/stat (Documentation/block/stat.rst): requests completed
// and sectors moved, by kind.
type diskStat struct {
	reads, readSectors     uint64
	writes, writeSectors   uint64
	discards, discardSects uint64
	flushes                uint64
}

// readDiskStat reads dev's counters; dev "" reads nothing.
func readDiskStat(dev string) (diskStat, error) {
	if dev == "" {
		return diskStat{}, nil
	}
	b, err := os.ReadFile("/sys/block/" + dev + "/stat")
	if err != nil {
		return diskStat{}, err
	}
	return parseDiskStat(string(b))
}

func parseDiskStat(s string) (diskStat, error) {
	f := strings.Fields(s)
	if len(f) < 11 {
		return diskStat{}, fmt.Errorf("bench: block device stat %q: %d fields, want at least 11", s, len(f))
	}
	n := make([]uint64, 17)
	for i := range min(len(f), len(n)) {
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return diskStat{}, fmt.Errorf("bench: block device stat field %d %q: %w", i+1, f[i], err)
		}
		n[i] = v
	}
	// Fields 12-15 (discards) came with Linux 4.18, 16-17 (flushes) with
	// 5.5; older kernels leave them zero here.
	return diskStat{reads: n[0], readSectors: n[2], writes: n[4], writeSectors: n[6],
		discards: n[11], discardSects: n[13], flushes: n[15]}, nil
}

func (a diskStat) sub(b diskStat) diskStat {
	return diskStat{a.reads - b.reads, a.readSectors - b.readSectors, a.writes - b.writes, a.writeSectors - b.writeSectors,
		a.discards - b.discards, a.discardSects - b.discardSects, a.flushes - b.flushes}
}

// String gives each kind's count and mean size: "1200 reads of 16 KiB,
// 300 writes of 512 KiB, 40 flushes".
func (a diskStat) String() string {
	var parts []string
	kind := func(n, sectors uint64, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s of %s", n, what, kib(sectors*512/n)))
		}
	}
	kind(a.reads, a.readSectors, "reads")
	kind(a.writes, a.writeSectors, "writes")
	kind(a.discards, a.discardSects, "discards")
	if a.flushes > 0 {
		parts = append(parts, fmt.Sprintf("%d flushes", a.flushes))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func kib(bytes uint64) string {
	if bytes >= 1<<20 && bytes%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", bytes>>20)
	}
	if k := float64(bytes) / 1024; k < 100 {
		return fmt.Sprintf("%.3g KiB", k)
	}
	return fmt.Sprintf("%.0f KiB", float64(bytes)/1024)
}
