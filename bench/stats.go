package bench

import (
	"fmt"
	"math"
	"slices"
)

// Statistics for the benchmarks' verdicts. A figure is the median of its
// rounds, with a distribution-free confidence interval for the median from
// order statistics: with n rounds sorted, [x(k), x(n+1-k)] holds the true
// median with probability 1 - 2·P(B < k), B ~ Binomial(n, 1/2), and k is
// the largest rank that keeps that at 95% or more. Five rounds give the
// whole range at 93.8%; two give it at 50%, which is why two rounds never
// support a verdict.

// interval is a median and its confidence interval.
type interval struct {
	Median, Lo, Hi float64
	Level          float64 // the interval's coverage, 0 to 1
	N              int
}

// medianInterval returns the median of xs and its confidence interval.
func medianInterval(xs []float64) interval {
	n := len(xs)
	if n == 0 {
		return interval{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	iv := interval{Median: medianOf(s), N: n}
	// P(B < k) for k = 1, 2, ...: keep the largest k with 2·P <= 5%.
	k, below := 1, binom(n, 0)
	for {
		next := below + binom(n, k)
		if 2*next > 0.05 || k >= n/2 {
			break
		}
		below, k = next, k+1
	}
	iv.Lo, iv.Hi, iv.Level = s[k-1], s[n-k], 1-2*below
	return iv
}

// binom is P(B = i) for B ~ Binomial(n, 1/2).
func binom(n, i int) float64 {
	lg := func(x int) float64 { v, _ := math.Lgamma(float64(x + 1)); return v }
	return math.Exp(lg(n) - lg(i) - lg(n-i) - float64(n)*math.Ln2)
}

// Verdicts of one target against another.
const (
	Faster      = "faster"
	Slower      = "slower"
	WithinNoise = "within noise"
	// TooFewRounds: an interval covers less than 90% (fewer than five
	// rounds), and no verdict is drawn.
	TooFewRounds = "too few rounds"
)

// minLevel is the least coverage of both intervals a verdict rests on.
const minLevel = 0.9

// comparison is how many times better a is than b (above 1 is better),
// with bounds from the two medians' intervals, and the verdict they give.
type comparison struct {
	Ratio, Lo, Hi float64
	Verdict       string
}

// compare compares rounds a against rounds b; higher says whether larger
// values are better (rates) or smaller (seconds). The verdict is Faster or
// Slower only where the ratio's interval excludes 1.
func compare(a, b []float64, higher bool) comparison {
	ia, ib := medianInterval(a), medianInterval(b)
	var c comparison
	if higher {
		c = comparison{Ratio: ia.Median / ib.Median, Lo: ia.Lo / ib.Hi, Hi: ia.Hi / ib.Lo}
	} else {
		c = comparison{Ratio: ib.Median / ia.Median, Lo: ib.Lo / ia.Hi, Hi: ib.Hi / ia.Lo}
	}
	switch {
	case ia.Level < minLevel || ib.Level < minLevel:
		c.Verdict = TooFewRounds
	case c.Lo > 1:
		c.Verdict = Faster
	case c.Hi < 1:
		c.Verdict = Slower
	default:
		c.Verdict = WithinNoise
	}
	return c
}

func (c comparison) String() string {
	return fmt.Sprintf("%.2fx [%.2f-%.2f] %s", c.Ratio, c.Lo, c.Hi, c.Verdict)
}
