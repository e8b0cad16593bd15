package bench

import (
	"math"
	"strings"
	"testing"
)

func TestMedianInterval(t *testing.T) {
	for _, tc := range []struct {
		xs           []float64
		lo, hi, want float64 // bounds, and the coverage
	}{
		{[]float64{3, 1, 2}, 1, 3, 0.75},
		{[]float64{5, 4, 3, 2, 1}, 1, 5, 0.9375},
		// Six rounds: the extremes are still needed for 95%.
		{[]float64{1, 2, 3, 4, 5, 6}, 1, 6, 0.96875},
		// Nine: the second and eighth values give 96.1%.
		{[]float64{9, 1, 8, 2, 7, 3, 6, 4, 5}, 2, 8, 1 - 2*10.0/512},
		// Twenty: the sixth and fifteenth give 95.9%.
		{[]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}, 6, 15, 0.9586},
	} {
		iv := medianInterval(tc.xs)
		if iv.Lo != tc.lo || iv.Hi != tc.hi || math.Abs(iv.Level-tc.want) > 1e-3 {
			t.Errorf("medianInterval(%v) = [%g, %g] at %.4f, want [%g, %g] at %.4f", tc.xs, iv.Lo, iv.Hi, iv.Level, tc.lo, tc.hi, tc.want)
		}
		if iv.Level < 0.95 && len(tc.xs) >= 6 {
			t.Errorf("medianInterval(%v): coverage %.3f under 95%%", tc.xs, iv.Level)
		}
	}
}

// The verdict follows the spread, not the medians alone: overlapping
// rounds are within noise however far apart their medians are (an
// estimator that ignored the spread would call the first case faster).
func TestCompare(t *testing.T) {
	for _, tc := range []struct {
		name   string
		a, b   []float64
		higher bool
		want   string
	}{
		{"medians apart, rounds overlap", []float64{90, 150, 160, 170, 300}, []float64{80, 100, 110, 120, 200}, true, WithinNoise},
		{"apart", []float64{150, 160, 170, 155, 165}, []float64{100, 110, 120, 105, 115}, true, Faster},
		{"apart, lower", []float64{100, 110, 120, 105, 115}, []float64{150, 160, 170, 155, 165}, true, Slower},
		{"seconds: less is faster", []float64{1.0, 1.1, 1.2, 1.05, 1.15}, []float64{2.0, 2.1, 2.2, 2.05, 2.15}, false, Faster},
		{"seconds: more is slower", []float64{2.0, 2.1, 2.2, 2.05, 2.15}, []float64{1.0, 1.1, 1.2, 1.05, 1.15}, false, Slower},
		{"two rounds each, far apart", []float64{200, 210}, []float64{100, 110}, true, TooFewRounds},
		{"equal", []float64{1, 2, 3, 4, 5}, []float64{1, 2, 3, 4, 5}, true, WithinNoise},
		// One round of a under one of b's and 24 of 25 pairs above: a
		// 95% interval excludes 1 (bounds from the two medians' intervals,
		// 118/120, did not).
		{"one pair of rounds overlaps", []float64{118, 150, 160, 170, 155}, []float64{100, 110, 120, 108, 115}, true, Faster},
		{"three rounds each", []float64{200, 210, 220}, []float64{100, 110, 120}, true, TooFewRounds},
	} {
		c := compare(tc.a, tc.b, tc.higher)
		if c.Verdict != tc.want {
			t.Errorf("%s: compare = %v, want %s", tc.name, c, tc.want)
		}
		if c.Lo > c.Ratio || c.Ratio > c.Hi {
			t.Errorf("%s: ratio %g outside its interval [%g, %g]", tc.name, c.Ratio, c.Lo, c.Hi)
		}
	}
}

func TestWideFigures(t *testing.T) {
	var figs []Figure
	add := func(target string, vals ...float64) {
		for i, v := range vals {
			figs = append(figs, Figure{Target: target, Workload: "4k", Value: v, Round: i + 1})
		}
	}
	add("tight", 100, 101, 99, 100, 102)
	add("loose", 100, 60, 140, 100, 90)
	add("short", 100, 100)
	wide := wideFigures(figs, 0.1)
	if len(wide) != 2 || !strings.HasPrefix(wide[0], "loose 4k") || !strings.HasPrefix(wide[1], "short 4k") {
		t.Errorf("wide = %q, want loose and short (too few rounds)", wide)
	}
	if w := wideFigures(figs[:5], 0.1); len(w) != 0 {
		t.Errorf("tight alone: %q", w)
	}
}

// mosesRank gives the ranks of the published two-sided 5% critical values
// of the Mann-Whitney U (reject at U <= crit, so the interval's rank is
// crit+1), with the coverage the exact distribution gives.
func TestMosesRank(t *testing.T) {
	for _, tc := range []struct {
		n, m, crit int
	}{
		{5, 5, 2}, {6, 6, 5}, {7, 7, 8}, {8, 8, 13}, {10, 10, 23}, {5, 8, 6}, {20, 20, 127},
	} {
		k, level := mosesRank(tc.n, tc.m)
		if k != tc.crit+1 {
			t.Errorf("mosesRank(%d, %d) = rank %d, want %d", tc.n, tc.m, k, tc.crit+1)
		}
		if level < 0.95 || level > 0.99 {
			t.Errorf("mosesRank(%d, %d): coverage %.4f, want 95%% to 99%%", tc.n, tc.m, level)
		}
	}
	// Five and five: P(U <= 2) = 4/252.
	if _, level := mosesRank(5, 5); math.Abs(level-(1-8.0/252)) > 1e-12 {
		t.Errorf("mosesRank(5, 5) coverage %.6f, want %.6f", level, 1-8.0/252)
	}
	// Three and three cannot reach 95%: the extremes, at 90%.
	if k, level := mosesRank(3, 3); k != 1 || math.Abs(level-0.9) > 1e-12 {
		t.Errorf("mosesRank(3, 3) = %d at %.4f, want 1 at 0.9", k, level)
	}
}

func TestMannWhitneySums(t *testing.T) {
	for _, nm := range [][2]int{{1, 1}, {2, 3}, {5, 5}, {7, 4}} {
		d := mannWhitney(nm[0], nm[1])
		if len(d) != nm[0]*nm[1]+1 {
			t.Fatalf("mannWhitney(%d, %d): %d values", nm[0], nm[1], len(d))
		}
		sum := 0.0
		for u, p := range d {
			sum += p
			if q := d[len(d)-1-u]; math.Abs(p-q) > 1e-12 {
				t.Errorf("mannWhitney(%d, %d): P(U=%d) %g, P(U=%d) %g: not symmetric", nm[0], nm[1], u, p, len(d)-1-u, q)
			}
		}
		if math.Abs(sum-1) > 1e-12 {
			t.Errorf("mannWhitney(%d, %d) sums to %g", nm[0], nm[1], sum)
		}
	}
}
