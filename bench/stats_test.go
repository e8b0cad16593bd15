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

func TestComparePaired(t *testing.T) {
	rounds := func(vs ...float64) map[int]float64 {
		m := map[int]float64{}
		for i, v := range vs {
			m[i+1] = v
		}
		return m
	}
	// The host's speed moves both targets together from round to round.
	drift := []float64{100, 300, 150, 250, 120, 200}
	scaled := func(k float64, jitter ...float64) map[int]float64 {
		m := map[int]float64{}
		for i, v := range drift {
			m[i+1] = v * k * jitter[i]
		}
		return m
	}
	for _, tc := range []struct {
		name   string
		a, b   map[int]float64
		higher bool
		want   string
	}{
		{"ahead in every round the host moved", scaled(1.2, 1, 1.05, 0.97, 1, 1.02, 0.99), rounds(drift...), true, Faster},
		{"behind in every round", scaled(0.8, 1, 1.05, 0.97, 1, 1.02, 0.99), rounds(drift...), true, Slower},
		{"seconds: less is faster", scaled(0.8, 1, 1.05, 0.97, 1, 1.02, 0.99), rounds(drift...), false, Faster},
		// The median ratio is near 1.02, but rounds go both ways.
		{"ratios either side of 1", scaled(1, 0.8, 1.3, 0.9, 1.25, 1.1, 0.95), rounds(drift...), true, WithinNoise},
		{"five rounds", rounds(200, 210, 220, 230, 240), rounds(100, 110, 120, 130, 140), true, TooFewRounds},
		// Rounds 7 and 8 of a have no partner and do not count.
		{"unpaired rounds left out", rounds(200, 210, 220, 230, 240, 250, 1, 1), rounds(100, 110, 120, 130, 140, 150), true, Faster},
	} {
		c := comparePaired(tc.a, tc.b, tc.higher)
		if c.Verdict != tc.want {
			t.Errorf("%s: comparePaired = %v, want %s", tc.name, c, tc.want)
		}
		if c.Lo > c.Ratio || c.Ratio > c.Hi {
			t.Errorf("%s: ratio %g outside its interval [%g, %g]", tc.name, c.Ratio, c.Lo, c.Hi)
		}
	}
	// The rounds a host moves by 3x hide a 20% lead from a comparison that
	// does not pair them.
	var a, b []float64
	for i, v := range scaled(1.2, 1, 1.05, 0.97, 1, 1.02, 0.99) {
		a, b = append(a, v), append(b, drift[i-1])
	}
	if c := compare(a, b, true); c.Verdict != WithinNoise {
		t.Errorf("unpaired: %v, want %s", c, WithinNoise)
	}
}

func TestSignedRank(t *testing.T) {
	// Two-sided 5% critical values of the signed-rank statistic: the
	// interval is the (crit+1)-th smallest and largest pairwise mean.
	for _, tc := range []struct{ n, crit int }{{6, 0}, {7, 2}, {8, 3}, {10, 8}, {15, 25}, {20, 52}} {
		k, level := signedRank(tc.n)
		if k != tc.crit+1 {
			t.Errorf("signedRank(%d) = rank %d, want %d", tc.n, k, tc.crit+1)
		}
		if level < 0.95 || level > 0.99 {
			t.Errorf("signedRank(%d): coverage %.4f, want 95%% to 99%%", tc.n, level)
		}
	}
	// Six pairs: the extremes, which miss only when all six signs agree.
	if _, level := signedRank(6); math.Abs(level-(1-2.0/64)) > 1e-12 {
		t.Errorf("signedRank(6) coverage %.6f, want %.6f", level, 1-2.0/64)
	}
	// Five pairs cannot reach 95%.
	if k, level := signedRank(5); k != 1 || math.Abs(level-(1-2.0/32)) > 1e-12 {
		t.Errorf("signedRank(5) = %d at %.4f, want 1 at %.4f", k, level, 1-2.0/32)
	}
}
