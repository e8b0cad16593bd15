package bench

import (
	"fmt"
	"math"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// plot draws, per setup, every target's speed on every workload relative
// to a reference (the line at 1): NBD's in the NFS comparison, the best
// peer's in the kernel benchmark. One PNG and one SVG each.
func (r *Results) plot(dir string) error {
	t := r.table()
	for _, s := range t.setups {
		p := plot.New()
		desc := ""
		for _, wl := range t.workloads {
			for _, tg := range t.targets {
				if c := t.cell(s, wl, tg); c != nil && desc == "" {
					desc = c.desc
				}
			}
		}
		relative := func(wl, tg string) float64 { return relativeToNBD(t, s, wl, tg) }
		reference := func(wl string) *cell { return t.cell(s, wl, nbdTarget) }
		p.Title.Text = fmt.Sprintf("NFS against NBD: %s, link %s", s.Topology, desc)
		p.Y.Label.Text = "speed relative to NBD (x; above 1: faster than NBD)"
		if r.Kind == "kernel" {
			relative = func(wl, tg string) float64 { return relativeToBestPeer(t, s, wl, tg) }
			reference = func(wl string) *cell {
				_, peer, ok := nbdlabAgainstPeers(t, s, wl)
				if !ok {
					return nil
				}
				return peer
			}
			p.Title.Text = fmt.Sprintf("fio through /dev/nbdN, kernel %s", r.Figures[0].Kernel)
			p.Y.Label.Text = "IOPS or MiB/s relative to the best peer (x)"
			p.X.Label.Text = "job"
		}
		if p.X.Label.Text == "" {
			p.X.Label.Text = "workload"
		}
		p.X.Tick.Label.Rotation = math.Pi / 5
		p.X.Tick.Label.XAlign = draw.XRight
		p.X.Tick.Label.YAlign = draw.YCenter
		p.Legend.Top = true
		p.Y.Min = 0
		// Each workload's group of bars takes 80% of its slot.
		width := vg.Points(480 / float64(len(t.workloads)*len(t.targets)))
		for i, tg := range t.targets {
			vals := make(plotter.Values, len(t.workloads))
			for j, wl := range t.workloads {
				vals[j] = relative(wl, tg)
			}
			bars, err := plotter.NewBarChart(vals, width)
			if err != nil {
				return fmt.Errorf("bench: plot %s %s: %w", s, tg, err)
			}
			bars.LineStyle.Width = vg.Length(0)
			bars.Color = plotutil.Color(i)
			bars.Offset = width * vg.Length(float64(i)-float64(len(t.targets)-1)/2)
			p.Add(bars)
			p.Legend.Add(targetLabel(t, s, tg), bars)
			// Each bar's 95% interval, from its rounds and the reference's.
			var errs []errorBar
			for j, wl := range t.workloads {
				c, ref := t.cell(s, wl, tg), reference(wl)
				if vals[j] == 0 || c == nil || ref == nil || c == ref || len(c.vals) < 2 || len(ref.vals) < 2 {
					continue
				}
				cmp := t.compare(c, ref, higherIsBetter(c.unit))
				// The bar is the ratio of medians; the interval is the rank-sum
				// one, which need not hold it at its centre.
				errs = append(errs, errorBar{x: float64(j), y: vals[j], lo: max(0, vals[j]-cmp.Lo), hi: max(0, cmp.Hi-vals[j])})
			}
			if len(errs) > 0 {
				eb, err := plotter.NewYErrorBars(errorBars(errs))
				if err != nil {
					return fmt.Errorf("bench: plot %s %s intervals: %w", s, tg, err)
				}
				p.Add(shifted{eb, bars.Offset})
			}
		}
		one := plotter.NewFunction(func(float64) float64 { return 1 })
		one.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(one)
		p.NominalX(t.workloads...)
		p.Y.Max *= 1.2 // room for the legend above the bars
		for _, ext := range []string{"png", "svg"} {
			path := filepath.Join(dir, plotName(r.Kind, s)+"."+ext)
			if err := p.Save(10*vg.Inch, 6*vg.Inch, path); err != nil {
				return fmt.Errorf("bench: save %s: %w", path, err)
			}
		}
	}
	return nil
}

// shifted draws error bars moved sideways by off, onto the bar of a
// group that they belong to.
type shifted struct {
	*plotter.YErrorBars
	off vg.Length
}

func (s shifted) Plot(c draw.Canvas, p *plot.Plot) {
	c.Push()
	defer c.Pop()
	c.Translate(vg.Point{X: s.off})
	s.YErrorBars.Plot(c, p)
}

// errorBar is one bar's interval: from y-lo to y+hi at x.
type errorBar struct{ x, y, lo, hi float64 }

// errorBars are plotter.XYer and plotter.YErrorer.
type errorBars []errorBar

func (e errorBars) Len() int                    { return len(e) }
func (e errorBars) XY(i int) (float64, float64) { return e[i].x, e[i].y }
func (e errorBars) YError(i int) (float64, float64) {
	return max(e[i].lo, 0), max(e[i].hi, 0)
}

// relativeToNBD is target tg's speed on workload wl divided by NBD's: for
// rates the ratio of rates, for times the inverse ratio of times. 0 where
// either is missing.
func relativeToNBD(t *table, s setup, wl, tg string) float64 {
	c, n := t.cell(s, wl, tg), t.cell(s, wl, nbdTarget)
	if c == nil || n == nil || len(c.vals) == 0 || len(n.vals) == 0 {
		return 0
	}
	v, nv := medianOf(c.vals), medianOf(n.vals)
	if v == 0 || nv == 0 {
		return 0
	}
	if higherIsBetter(c.unit) {
		return v / nv
	}
	return nv / v
}

// relativeToBestPeer is target tg's median on workload wl divided by the
// best peer's (not nbdlab's); 0 where either is missing.
func relativeToBestPeer(t *table, s setup, wl, tg string) float64 {
	c := t.cell(s, wl, tg)
	_, peer, ok := nbdlabAgainstPeers(t, s, wl)
	if c == nil || len(c.vals) == 0 || !ok {
		return 0
	}
	return medianOf(c.vals) / medianOf(peer.vals)
}
