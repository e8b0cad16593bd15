package bench

import (
	"bytes"
	"strings"
	"testing"
)

// The server report draws its verdicts from the rounds: nbdlab clearly
// ahead on one job, clearly behind on another, overlapping on a third,
// and three rounds are too few for any.
func TestServerReport(t *testing.T) {
	for _, tc := range []struct {
		rounds int
		want   map[string]string // job: verdict of nbdlab against the best peer
	}{
		{5, map[string]string{"4k randwrite QD16": "faster", "1M write QD4": "slower", "4k randread QD16": "within noise"}},
		{3, map[string]string{"4k randwrite QD16": "too few rounds", "1M write QD4": "too few rounds"}},
	} {
		runs := map[string]map[string][]Result{}
		for _, j := range ServerJobs() {
			runs[j.Name] = map[string][]Result{}
			for _, tg := range ServerTargets() {
				for i := range tc.rounds {
					iops := 1000.0 + float64(i)
					if !tg.Peer {
						switch j.Name {
						case "4k randwrite QD16":
							iops = 2000 + float64(i)
						case "1M write QD4":
							iops = 500 + float64(i)
						case "4k randread QD16":
							iops = 998 + 2*float64(i)
						}
					}
					runs[j.Name][tg.Name] = append(runs[j.Name][tg.Name], Result{IOPS: iops})
				}
			}
		}
		var out bytes.Buffer
		report(&out, runs)
		for job, verdict := range tc.want {
			line := ""
			for _, l := range strings.Split(out.String(), "\n") {
				if strings.HasPrefix(l, job) && strings.Contains(l, "x [") {
					line = l
				}
			}
			// The first verdict on the line is nbdlab's best against the best peer.
			if i := strings.Index(line, "] "); i < 0 || !strings.HasPrefix(line[i+2:], verdict) {
				t.Errorf("%d rounds, %s: %q, want the verdict %q", tc.rounds, job, line, verdict)
			}
		}
	}
}
