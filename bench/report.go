package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	"github.com/nbdlab/nbdlab/vm"
)

// nbdTarget is the NFS comparison's block-device target.
const nbdTarget = "nbd"

// WriteNFSReport writes the comparison as Markdown: per setup, a table of
// every workload on every target, the ratio of NBD to the best NFS that
// stores what it acknowledges, and whether NBD is the faster there; then
// the CPU each side spent.
func (r *Results) WriteNFSReport(w io.Writer) error {
	t := r.table()
	var b strings.Builder
	fmt.Fprintf(&b, "# NBD against NFS\n\n")
	if len(r.Figures) > 0 {
		f := r.Figures[0]
		fmt.Fprintf(&b, "Started %s. Kernel %s, %d CPUs, %s. NBD: %s, ext4 (%s). NFS: %s.\n\n",
			r.Started.UTC().Format("2006-01-02 15:04 UTC"), f.Kernel, f.CPUs, accelsOf(r), serverOf(r, nbdTarget), mountOf(r, nbdTarget), nfsServerOf(r))
	}
	fmt.Fprintf(&b, "Times are seconds (lower is better), rates MiB/s or IOPS (higher is better); the median of the rounds. "+
		"**NBD vs NFS** compares NBD with the fastest NFS target that stores what it acknowledges (sync exports): "+
		"above 1.00x NBD is faster; the ratio is the median of the ratios of every NBD round to every NFS round, the bracket its 95%% interval (Moses's, from the Mann-Whitney rank-sum test), "+
		"and the verdict is *faster* or *slower* only where it excludes 1.00 (*within noise* otherwise, *too few rounds* under 5 rounds). Targets marked * are `async` exports: nfsd acknowledges writes it has not "+
		"stored, and a server crash loses them; they are shown, never counted as the best NFS.\n\n")
	for _, s := range t.setups {
		desc := ""
		for _, wl := range t.workloads {
			for _, tg := range t.targets {
				if c := t.cell(s, wl, tg); c != nil && desc == "" {
					desc = c.desc
				}
			}
		}
		fmt.Fprintf(&b, "## %s, link %s\n\n", s.Topology, desc)
		// One VM ran the section, with one set of sizes: its first figure
		// speaks for all.
		if i := slices.IndexFunc(r.Figures, func(f Figure) bool { return f.Topology == s.Topology && f.Link == s.Link }); i >= 0 {
			f := r.Figures[i]
			if f.Files > 0 {
				fmt.Fprintf(&b, "A tree of %d files, %d small files, a %d MiB file.\n\n", f.Files, f.SmallFiles, f.FileBytes>>20)
			}
			b.WriteString(clockNote(f.Accel, "Times, rates and CPU seconds", "the filesystem, the servers and the workloads", "each target"))
		}
		label := func(tg string) string { return targetLabel(t, s, tg) }
		t.writeFigures(&b, s, "workload", label, []string{"NBD vs NFS"}, func(wl string) []string {
			nbd, best, ok := nbdAgainstNFS(t, s, wl)
			if !ok {
				return []string{"-"}
			}
			return []string{t.compare(nbd, best, higherIsBetter(nbd.unit)).String()}
		})
		b.WriteString("\nCPU seconds while each workload ran (client + server):\n\n| workload |")
		for _, tg := range t.targets {
			fmt.Fprintf(&b, " %s |", tg)
		}
		b.WriteString("\n|---|")
		for range t.targets {
			b.WriteString("---:|")
		}
		b.WriteString("\n")
		for _, wl := range t.workloads {
			fmt.Fprintf(&b, "| %s |", wl)
			for _, tg := range t.targets {
				c := t.cell(s, wl, tg)
				if c == nil || len(c.vals) == 0 {
					b.WriteString(" - |")
					continue
				}
				fmt.Fprintf(&b, " %.2f + %.2f |", medianOf(c.client), medianOf(c.server))
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
		writeRequests(&b, r, s)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeRequests lists what the kernel sent the NBD device in each
// workload of setup s (its first round): the request sizes and flushes
// that explain where NBD wins and loses.
func writeRequests(b *strings.Builder, r *Results, s setup) {
	first := true
	for _, f := range r.Figures {
		if f.Topology != s.Topology || f.Link != s.Link || f.Target != nbdTarget || f.Requests == "" || f.Round > 1 {
			continue
		}
		if first {
			b.WriteString("What the kernel sent the NBD device (/sys/block/nbdN/stat):\n\n| workload | requests |\n|---|---|\n")
			first = false
		}
		fmt.Fprintf(b, "| %s | %s |\n", f.Workload, f.Requests)
	}
	if !first {
		b.WriteString("\n")
	}
}

// writeFigures writes setup s as a Markdown table: a row per workload
// (the first column, headed first) with its unit and each target's
// figure (headed label(target)), then the columns extra, filled by more.
func (t *table) writeFigures(b *strings.Builder, s setup, first string, label func(string) string, extra []string, more func(wl string) []string) {
	fmt.Fprintf(b, "| %s | unit |", first)
	for _, tg := range t.targets {
		fmt.Fprintf(b, " %s |", label(tg))
	}
	for _, e := range extra {
		fmt.Fprintf(b, " %s |", e)
	}
	b.WriteString("\n|---|---|")
	for range len(t.targets) + len(extra) {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, wl := range t.workloads {
		unit := ""
		for _, tg := range t.targets {
			if c := t.cell(s, wl, tg); c != nil {
				unit = c.unit
			}
		}
		fmt.Fprintf(b, "| %s | %s |", wl, unit)
		for _, tg := range t.targets {
			fmt.Fprintf(b, " %s |", formatCell(t.cell(s, wl, tg)))
		}
		for _, v := range more(wl) {
			fmt.Fprintf(b, " %s |", v)
		}
		b.WriteString("\n")
	}
}

// nbdAgainstNFS returns the NBD cell of workload wl in setup s and the
// cell of the best durable NFS target, by median.
func nbdAgainstNFS(t *table, s setup, wl string) (nbd, best *cell, ok bool) {
	nbd = t.cell(s, wl, nbdTarget)
	if nbd == nil || len(nbd.vals) == 0 {
		return nil, nil, false
	}
	for _, tg := range t.targets {
		c := t.cell(s, wl, tg)
		if tg == nbdTarget || c == nil || !c.durable || len(c.vals) == 0 {
			continue
		}
		v := medianOf(c.vals)
		if best == nil || (higherIsBetter(c.unit) && v > medianOf(best.vals)) || (!higherIsBetter(c.unit) && v < medianOf(best.vals)) {
			best = c
		}
	}
	return nbd, best, best != nil && medianOf(best.vals) != 0 && medianOf(nbd.vals) != 0
}

func targetLabel(t *table, s setup, tg string) string {
	for _, wl := range t.workloads {
		if c := t.cell(s, wl, tg); c != nil && !c.durable {
			return tg + "*"
		}
	}
	return tg
}

func formatCell(c *cell) string {
	switch {
	case c == nil:
		return "-"
	case c.err != "" && len(c.vals) == 0:
		return "error"
	}
	m := medianOf(c.vals)
	var s string
	switch {
	case m >= 100:
		s = fmt.Sprintf("%.0f", m)
	case m >= 10:
		s = fmt.Sprintf("%.1f", m)
	default:
		s = fmt.Sprintf("%.2f", m)
	}
	if len(c.vals) > 1 {
		lo, hi := c.vals[0], c.vals[0]
		for _, v := range c.vals {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
		s += fmt.Sprintf(" (%.3g-%.3g)", lo, hi)
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return "accelerator unknown"
	}
	return s
}

func serverOf(r *Results, target string) string {
	for _, f := range r.Figures {
		if f.Target == target {
			return f.Server
		}
	}
	return "-"
}

func mountOf(r *Results, target string) string {
	for _, f := range r.Figures {
		if f.Target == target {
			return f.Mount
		}
	}
	return "-"
}

func nfsServerOf(r *Results) string {
	for _, f := range r.Figures {
		if f.Target != nbdTarget {
			return f.Server
		}
	}
	return "-"
}

// clockNote is the paragraph that says what figures measured under
// accel mean when the guest's clock counts instructions ("tcg+icount"),
// and nothing otherwise: what are the figures, who executed the
// instructions, and whose work they weigh.
func clockNote(accel, what, who, whose string) string {
	if accel != "tcg+icount" {
		return ""
	}
	return fmt.Sprintf("The guest's clock is QEMU's instruction counter (-icount): while the guest runs, each instruction it executes takes %d ns of its time. "+
		"%s here count the instructions %s executed, the same however busy the host was, and repeat to a percent or two; "+
		"they weigh the work %s makes the machine do, not the speed of any real CPU (--host-clock times by the host instead).\n\n", vm.ICountNs, what, who, whose)
}

// accelsOf names how the figures' VMs ran: one accelerator if all ran
// alike, else each with the topologies it ran, in the order first seen.
func accelsOf(r *Results) string {
	var accels []string
	where := map[string][]string{}
	for _, f := range r.Figures {
		a := orUnknown(f.Accel)
		if _, ok := where[a]; !ok {
			accels = append(accels, a)
		}
		if !slices.Contains(where[a], f.Topology) {
			where[a] = append(where[a], f.Topology)
		}
	}
	if len(accels) == 1 {
		return accels[0]
	}
	parts := make([]string, len(accels))
	for i, a := range accels {
		parts[i] = a + " (" + strings.Join(where[a], ", ") + ")"
	}
	return strings.Join(parts, ", ")
}
