package bench

import (
	"strings"
	"testing"
	"time"
)

func TestParseFio(t *testing.T) {
	// The shape of fio 3.33's JSON output, trimmed to what is read.
	const out = `{"jobs":[{"read":{"iops":1000.5,"bw_bytes":4098048,"io_bytes":40980480,
	"clat_ns":{"percentile":{"99.000000":250000}}},"write":{"iops":500,"bw_bytes":2048000,"io_bytes":20480000,
	"clat_ns":{"percentile":{"99.000000":900000}}}}]}`
	r, err := parseFio([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if r.IOPS != 1500.5 || r.BW != 6146048 || r.Bytes != 61460480 || r.P99 != 900*time.Microsecond {
		t.Fatalf("parsed %+v", r)
	}
	r.CPU = 3 * time.Second
	if got := r.CPUPerGiB(); got < 52.3 || got > 52.5 {
		t.Fatalf("CPU s/GiB = %f, want 3s over 0.0572 GiB", got)
	}
	for in, want := range map[string]string{`{"jobs":[]}`: "no jobs", `{"jobs":[{}]}`: "moved no data", `nope`: "parse"} {
		if _, err := parseFio([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseFio(%s) = %v, want %q", in, err, want)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		iops           []float64
		mid, low, high float64
	}{
		{nil, 0, 0, 0},
		{[]float64{5}, 5, 5, 5},
		{[]float64{9, 1, 5}, 5, 1, 9},
		{[]float64{4, 8, 2, 6}, 6, 2, 8},
	} {
		var rs []Result
		for i, x := range tc.iops {
			rs = append(rs, Result{IOPS: x, Bytes: int64(i)})
		}
		mid, lo, hi := median(rs)
		if mid.IOPS != tc.mid || lo != tc.low || hi != tc.high {
			t.Errorf("median(%v) = %v, %v, %v; want %v, %v, %v", tc.iops, mid.IOPS, lo, hi, tc.mid, tc.low, tc.high)
		}
		if len(rs) > 0 && rs[0].IOPS != tc.iops[0] {
			t.Errorf("median reordered its input")
		}
	}
}

func TestEnvInt(t *testing.T) {
	for _, tc := range []struct {
		val  string
		want int
		err  bool
	}{{"", 3, false}, {"7", 7, false}, {"0", 0, true}, {"-2", 0, true}, {"ten", 0, true}} {
		t.Setenv("BENCH_TEST_N", tc.val)
		got, err := envInt("BENCH_TEST_N", 3)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("envInt(%q) = %d, %v", tc.val, got, err)
		}
		if err != nil && !strings.Contains(err.Error(), "BENCH_TEST_N") {
			t.Errorf("error %q does not name the variable", err)
		}
	}
}
