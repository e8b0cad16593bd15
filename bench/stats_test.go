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
