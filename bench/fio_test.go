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
