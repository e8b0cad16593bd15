package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"
)

// Results is every figure of a run with the settings it was measured
// under: what results.json holds.
type Results struct {
	Kind    string    `json:"kind"` // "nfs" or "kernel"
	Started time.Time `json:"started"`
	Figures []Figure  `json:"figures"`
}

// Figure is one measurement.
type Figure struct {
	Topology string `json:"topology"` // netns or vms
	Link     string `json:"link"`     // link profile: none, lan, wan
	LinkDesc string `json:"link_desc"`
	Kernel   string `json:"kernel"`
	Accel    string `json:"accel,omitempty"`
	CPUs     int    `json:"cpus"`
	// Target is what was measured: "nbd" (a filesystem on /dev/nbdN),
	// "nfs4.2-sync", or for the kernel benchmark the NBD server.
	Target string `json:"target"`
	Server string `json:"server"` // the server and its settings
	Export string `json:"export,omitempty"`
	Mount  string `json:"mount,omitempty"`
	// Durable is false where the server acknowledges writes it has not
	// stored (NFS async exports).
	Durable bool `json:"durable"`
	// The NFS comparison's sizes: files untarred, small files created,
	// bytes of the sequential file.
	Files      int     `json:"files,omitempty"`
	SmallFiles int     `json:"small_files,omitempty"`
	FileBytes  int64   `json:"file_bytes,omitempty"`
	Workload   string  `json:"workload"`
	Unit       string  `json:"unit"` // s (lower is better), MiB/s, IOPS
	Value      float64 `json:"value"`
	Round      int     `json:"round"`
	Wall       float64 `json:"wall_s"`
	// CPU seconds spent while the workload ran, on each side.
	ClientCPU float64 `json:"client_cpu_s"`
	ServerCPU float64 `json:"server_cpu_s"`
	// ServerUserCPU is the part of ServerCPU spent in user space (the
	// kernel benchmark); the rest is the kernel's, in system calls.
	ServerUserCPU float64 `json:"server_user_cpu_s,omitempty"`
	// The server's context switches while the workload ran, voluntary
	// (it blocked) and involuntary (it was preempted), summed over its
	// threads alive at the end (the kernel benchmark).
	ServerVoluntary   int64 `json:"server_voluntary_switches,omitempty"`
	ServerInvoluntary int64 `json:"server_involuntary_switches,omitempty"`
	// Requests is what the kernel sent the NBD device while the workload
	// ran, from /sys/block/nbdN/stat (the nbd target only).
	Requests string `json:"requests,omitempty"`
	// DevRequests is how many requests the device completed while the
	// workload ran (the kernel benchmark): what per-request costs divide by.
	DevRequests uint64 `json:"dev_requests,omitempty"`
	Error       string `json:"error,omitempty"`
}

// higherIsBetter reports whether a larger value of unit is better.
func higherIsBetter(unit string) bool { return unit != "s" }

// WriteJSON writes r to path.
func (r *Results) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// ReadResults reads a results.json.
func ReadResults(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("bench: %s: %w", path, err)
	}
	for i, f := range r.Figures {
		if f.Workload == "" || f.Target == "" || f.Unit == "" {
			return nil, fmt.Errorf("bench: %s: figure %d has no workload, target or unit", path, i)
		}
	}
	return &r, nil
}

// setup is one topology and link of a run.
type setup struct{ Topology, Link string }

func (s setup) String() string { return s.Topology + "/" + s.Link }

// cell is the figures of one workload on one target in one setup, over
// rounds.
type cell struct {
	vals           []float64
	rounds         []int // the round of each of vals
	client         []float64
	server         []float64
	perRequest     []float64 // server CPU seconds per device request, where counted
	userPerRequest []float64 // of those, the seconds in user space, where counted
	switches       []float64 // server context switches per device request, where counted
	err            string
	durable        bool
	unit, desc     string
}

// median returns the middle value of xs (the mean of the two middle ones
// for an even count).
func medianOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// table groups figures by setup, workload and target, keeping the order
// in which each first appears.
type table struct {
	// paired: each round ran every target on a workload back to back,
	// so rounds compare pair by pair (bench kernel).
	paired    bool
	setups    []setup
	workloads []string
	targets   []string
	cells     map[setup]map[string]map[string]*cell
}

func (r *Results) table() *table {
	t := &table{cells: map[setup]map[string]map[string]*cell{}, paired: r.Kind == "kernel"}
	for _, f := range r.Figures {
		s := setup{f.Topology, f.Link}
		if t.cells[s] == nil {
			t.cells[s] = map[string]map[string]*cell{}
			t.setups = append(t.setups, s)
		}
		if !slices.Contains(t.workloads, f.Workload) {
			t.workloads = append(t.workloads, f.Workload)
		}
		if !slices.Contains(t.targets, f.Target) {
			t.targets = append(t.targets, f.Target)
		}
		if t.cells[s][f.Workload] == nil {
			t.cells[s][f.Workload] = map[string]*cell{}
		}
		c := t.cells[s][f.Workload][f.Target]
		if c == nil {
			c = &cell{durable: f.Durable, unit: f.Unit, desc: f.LinkDesc}
			t.cells[s][f.Workload][f.Target] = c
		}
		if f.Error != "" {
			c.err = f.Error
			continue
		}
		c.vals = append(c.vals, f.Value)
		c.rounds = append(c.rounds, f.Round)
		c.client = append(c.client, f.ClientCPU)
		c.server = append(c.server, f.ServerCPU)
		if f.DevRequests > 0 {
			if f.ServerCPU > 0 { // a server that answered requests took some CPU: 0 is not measured
				c.perRequest = append(c.perRequest, f.ServerCPU/float64(f.DevRequests))
				// Zero is a reading (under a clock tick of user time), not
				// a gap: a spliced read can take none.
				c.userPerRequest = append(c.userPerRequest, f.ServerUserCPU/float64(f.DevRequests))
			}
			if sw := f.ServerVoluntary + f.ServerInvoluntary; sw > 0 {
				c.switches = append(c.switches, float64(sw)/float64(f.DevRequests))
			}
		}
	}
	return t
}

func (t *table) cell(s setup, workload, target string) *cell {
	return t.cells[s][workload][target]
}

// compare compares cell a against cell b: round by round where the
// table's rounds pair up, as whole samples otherwise.
func (t *table) compare(a, b *cell, higher bool) comparison {
	if !t.paired {
		return compare(a.vals, b.vals, higher)
	}
	byRound := func(c *cell) map[int]float64 {
		m := make(map[int]float64, len(c.vals))
		for i, v := range c.vals {
			m[c.rounds[i]] = v
		}
		return m
	}
	return comparePaired(byRound(a), byRound(b), higher)
}

// Outputs are the files WriteOutputs writes into dir.
func (r *Results) Outputs(dir string) []string {
	t := r.table()
	files := []string{filepath.Join(dir, "results.json"), filepath.Join(dir, "report.md")}
	for _, s := range t.setups {
		for _, ext := range []string{"png", "svg"} {
			files = append(files, filepath.Join(dir, plotName(r.Kind, s)+"."+ext))
		}
	}
	return files
}

func plotName(kind string, s setup) string {
	return fmt.Sprintf("%s-%s-%s", kind, s.Topology, s.Link)
}
