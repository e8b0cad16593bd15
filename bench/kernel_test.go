package bench

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

func TestKernelReport(t *testing.T) {
	r := &Results{Kind: "kernel", Started: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	add := func(server, job, unit string, vals ...float64) {
		user := 0.2
		if server == "qemu-nbd" && unit == "MiB/s" {
			user = 0 // less than a clock tick: reported as 0, not missing
		}
		for i, v := range vals {
			r.Figures = append(r.Figures, Figure{Topology: "netns", Link: "none", Kernel: "6.12", CPUs: 2,
				Target: server, Workload: job, Unit: unit, Value: v, Round: i + 1, Durable: true,
				ServerCPU: 0.5, ServerUserCPU: user, DevRequests: uint64(v) * 5, ServerVoluntary: int64(v) * 5, ServerInvoluntary: int64(v) * 5})
		}
	}
	add("nbdlab-mem", "4k randread QD1, 1 conn", "IOPS", 100, 300)                      // median 200
	add("nbdlab-file", "4k randread QD1, 1 conn", "IOPS", 250, 240, 260, 255, 245, 250) // nbdlab's best
	add("nbdkit-file", "4k randread QD1, 1 conn", "IOPS", 500, 490, 510, 505, 495, 500) // best peer
	add("nbdlab-file", "4k randwrite QD1, 1 conn", "IOPS", 250, 240, 260, 255, 245)
	add("nbdkit-file", "4k randwrite QD1, 1 conn", "IOPS", 500, 490, 510, 505, 495)
	add("qemu-nbd", "4k randread QD1, 1 conn", "IOPS", 400, 400)
	add("nbdlab-file", "1M read QD4, 1 conn", "MiB/s", 90)
	add("qemu-nbd", "1M read QD4, 1 conn", "MiB/s", 30)
	add("nbdlab-file", "1M write QD4, 4 conn", "MiB/s", 90) // no peer measured
	// A round whose server CPU was not measured (a process counted at the
	// start of the job had exited by its end) gives no CPU figure.
	r.Figures = append(r.Figures, Figure{Topology: "netns", Link: "none", Kernel: "6.12", CPUs: 2, Target: "qemu-nbd",
		Workload: "4k randwrite QD16, 1 conn", Unit: "IOPS", Value: 30, Round: 1, Durable: true, DevRequests: 150})
	var b bytes.Buffer
	if err := r.WriteKernelReport(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| job | unit | nbdlab-mem | nbdlab-file | nbdkit-file | qemu-nbd | nbdlab / best peer |",
		// Six rounds, each run beside the same round of the other server:
		// a verdict, its interval the least and greatest mean of two
		// rounds' ratios, 240/490 and 260/510.
		"| 4k randread QD1, 1 conn | IOPS | 200 (100-300) | 250 (240-260) | 500 (490-510) | 400 (400-400) | 0.50x [0.49-0.51] slower |",
		// Five pairs of rounds: none.
		"| 4k randwrite QD1, 1 conn | IOPS | - | 250 (240-260) | 500 (490-510) | - | 0.50x [0.49-0.51] too few rounds |",
		"| 1M read QD4, 1 conn | MiB/s | - | 90.0 | - | 30.0 | 3.00x [3.00-3.00] too few rounds |",
		// 0.5 s of CPU over five seconds of requests.
		"| 4k randread QD1, 1 conn | 667 | 400 | 200 | 250 |",
		// 0.2 s of it in user space.
		"Of that, µs in user space",
		"| 4k randread QD1, 1 conn | 267 | 160 | 80 | 100 |",
		"| 1M read QD4, 1 conn | - | 444 | - | 0 |",
		// One voluntary and one involuntary switch a request.
		"| 4k randread QD1, 1 conn | 2.00 | 2.00 | 2.00 | 2.00 |",
		"| 1M write QD4, 4 conn | MiB/s | - | 90.0 | - | - | - |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
	cpu := b.String()[strings.Index(b.String(), "Server CPU µs per request"):strings.Index(b.String(), "Of that, µs in user space")]
	if want := "| 4k randwrite QD16, 1 conn | - | - | - | - |"; !strings.Contains(cpu, want) {
		t.Errorf("CPU table lacks %q (a round not measured is no figure):\n%s", want, cpu)
	}
	tb := r.table()
	if got := relativeToBestPeer(tb, setup{"netns", "none"}, "4k randread QD1, 1 conn", "nbdlab-file"); got != 0.5 {
		t.Errorf("nbdlab-file relative to the best peer: %g, want 0.5", got)
	}
	dir := t.TempDir()
	if err := r.WriteOutputs(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range r.Outputs(dir) {
		if fi, err := os.Stat(f); err != nil || fi.Size() == 0 {
			t.Errorf("output %s: %v", f, err)
		}
	}
}

// TestKernelReportClock: the report says what its figures mean when the
// guest's clock counted instructions, and says nothing of it otherwise.
func TestKernelReportClock(t *testing.T) {
	const note = "IOPS, MiB/s and CPU times here count the instructions the server, the kernel and fio executed"
	for _, tc := range []struct {
		accel string
		want  bool
	}{{"tcg+icount", true}, {"tcg", false}, {"kvm", false}} {
		r := &Results{Kind: "kernel", Figures: []Figure{{Topology: "netns", Link: "none", Kernel: "6.12", CPUs: 2, Accel: tc.accel,
			Target: "nbdlab-file", Workload: "4k randread QD1, 1 conn", Unit: "IOPS", Value: 100, Round: 1, Durable: true}}}
		var b bytes.Buffer
		if err := r.WriteKernelReport(&b); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(b.String(), note); got != tc.want {
			t.Errorf("accel %s: report says its clock counts instructions: %v, want %v:\n%s", tc.accel, got, tc.want, b.String())
		}
	}
}
