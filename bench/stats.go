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
// with its 95% interval, and the verdict it gives.
type comparison struct {
	Ratio, Lo, Hi float64
	Verdict       string
}

// compare compares rounds a against rounds b; higher says whether larger
// values are better (rates) or smaller (seconds). The ratio is the
// Hodges-Lehmann estimate, the median of the ratios of every round of a
// to every round of b, and its interval is Moses's, from the exact
// distribution of the Mann-Whitney statistic: distribution-free, with no
// assumption but that a's rounds are b's scaled by the ratio. The verdict
// is Faster or Slower only where the interval excludes 1.
//
// Bounding the ratio by the two medians' own intervals instead (a's
// lowest round over b's highest, with five rounds each) holds it at 99%
// or more, not 95%: it called a target within noise whose every round
// but one beat every round of the other.
func compare(a, b []float64, higher bool) comparison {
	if !higher {
		a, b = b, a
	}
	var logs []float64
	for _, x := range a {
		for _, y := range b {
			if x > 0 && y > 0 {
				logs = append(logs, math.Log(x)-math.Log(y))
			}
		}
	}
	c := comparison{Verdict: TooFewRounds}
	if len(logs) == 0 {
		return c
	}
	slices.Sort(logs)
	k, level := mosesRank(len(a), len(b))
	if len(logs) != len(a)*len(b) { // a zero or negative round: no ranks to trust
		k, level = 1, 0
	}
	c.Ratio = math.Exp(medianOf(logs))
	c.Lo, c.Hi = math.Exp(logs[k-1]), math.Exp(logs[len(logs)-k])
	c.judge(medianInterval(a).Level >= minLevel && medianInterval(b).Level >= minLevel && level >= 0.95)
	return c
}

// judge sets the verdict from the interval: too few rounds unless enough
// were measured for it to cover 95%, else faster or slower where it
// excludes 1, within noise where it does not.
func (c *comparison) judge(enough bool) {
	switch {
	case !enough:
		c.Verdict = TooFewRounds
	case c.Lo > 1:
		c.Verdict = Faster
	case c.Hi < 1:
		c.Verdict = Slower
	default:
		c.Verdict = WithinNoise
	}
}

// mosesRank returns the rank k for which the k-th smallest and k-th
// largest of the n·m pairwise differences bound the shift between two
// samples of n and m with 95% coverage or more, and that coverage:
// 1 - 2·P(U < k), U the Mann-Whitney statistic under no difference. Where
// even the extremes fall short of 95% (too few rounds), it returns 1 and
// their coverage.
func mosesRank(n, m int) (int, float64) {
	dist := mannWhitney(n, m)
	k, below := 1, dist[0]
	for k < len(dist) && 2*(below+dist[k]) <= 0.05 && k < n*m/2 {
		below += dist[k]
		k++
	}
	return k, 1 - 2*below
}

// mannWhitney returns P(U = u) for u = 0..n·m, U the Mann-Whitney
// statistic of samples of n and m under no difference, counted exactly:
// the number of orderings with u inversions, f(n, m, u) = f(n-1, m, u-m)
// + f(n, m-1, u), over C(n+m, n).
func mannWhitney(n, m int) []float64 {
	// prev[j] is the distribution for i-1 and j, cur[j] for i and j.
	prev := make([][]float64, m+1)
	for j := range prev {
		prev[j] = []float64{1}
	}
	for i := 1; i <= n; i++ {
		cur := make([][]float64, m+1)
		cur[0] = []float64{1}
		for j := 1; j <= m; j++ {
			cur[j] = make([]float64, i*j+1)
			for u := range cur[j] {
				if u >= j && u-j < len(prev[j]) {
					cur[j][u] += prev[j][u-j]
				}
				if u < len(cur[j-1]) {
					cur[j][u] += cur[j-1][u]
				}
			}
		}
		prev = cur
	}
	d := prev[m]
	total := 0.0
	for _, v := range d {
		total += v
	}
	out := make([]float64, len(d))
	for u, v := range d {
		out[u] = v / total
	}
	return out
}

func (c comparison) String() string {
	return fmt.Sprintf("%.2fx [%.2f-%.2f] %s", c.Ratio, c.Lo, c.Hi, c.Verdict)
}

// comparePaired compares a against b where their rounds pair up: round i
// of a ran beside round i of b, so what slowed one slowed the other. The
// ratio is the Hodges-Lehmann estimate of the rounds' log ratios, the
// median of their pairwise means, and its interval is the one the
// Wilcoxon signed-rank test gives, from the exact distribution of its
// statistic: distribution-free, with no assumption but that the log
// ratios spread symmetrically about their centre. Only rounds measured on
// both count. Six pairs are the fewest that reach 95% (five give 93.8%).
func comparePaired(a, b map[int]float64, higher bool) comparison {
	var d []float64
	for r, x := range a {
		if y, ok := b[r]; ok && x > 0 && y > 0 {
			if higher {
				d = append(d, math.Log(x)-math.Log(y))
			} else {
				d = append(d, math.Log(y)-math.Log(x))
			}
		}
	}
	c := comparison{Verdict: TooFewRounds}
	if len(d) == 0 {
		return c
	}
	var walsh []float64
	for i := range d {
		for j := i; j < len(d); j++ {
			walsh = append(walsh, (d[i]+d[j])/2)
		}
	}
	slices.Sort(walsh)
	k, level := signedRank(len(d))
	c.Ratio = math.Exp(medianOf(walsh))
	c.Lo, c.Hi = math.Exp(walsh[k-1]), math.Exp(walsh[len(walsh)-k])
	c.judge(level >= 0.95)
	return c
}

// signedRank returns the rank k for which the k-th smallest and largest
// of the n(n+1)/2 pairwise means of n paired differences bound their
// centre with 95% coverage or more, and that coverage: 1 - 2·P(T < k), T
// the signed-rank statistic under no difference. T is the sum of the
// ranks of the positive differences, each of the 2^n sign patterns
// equally likely; its distribution counts the subsets of 1..n by sum.
func signedRank(n int) (int, float64) {
	m := n * (n + 1) / 2
	count := make([]float64, m+1)
	count[0] = 1
	for r := 1; r <= n; r++ {
		for t := m; t >= r; t-- {
			count[t] += count[t-r]
		}
	}
	total := math.Ldexp(1, n)
	k, below := 1, count[0]/total
	for k < m/2 && 2*(below+count[k]/total) <= 0.05 {
		below += count[k] / total
		k++
	}
	return k, 1 - 2*below
}
