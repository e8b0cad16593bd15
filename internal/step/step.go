// Package step prints the numbered, timed steps of a long job (building
// nbd.ko, the lab), one way for every job, and keeps their times for a
// report.
package step

import (
	"bytes"
	"fmt"
	"io"
	"time"
)

// Step is one step done, or failed.
type Step struct {
	Name string
	Took time.Duration
	Err  error
}

// Printer numbers and times steps. Total, when known, is printed with
// each number ("[2/5]").
type Printer struct {
	Out   io.Writer
	Total int
	Steps []Step
	Start time.Time
}

// New returns a Printer writing to out for a job of total steps (0 when
// not known).
func New(out io.Writer, total int) *Printer {
	return &Printer{Out: out, Total: total, Start: time.Now()}
}

// Do runs fn as the next step: it prints the step's number and name, then
// "ok" or "FAILED" with its time. A failure comes back wrapped with the
// step's name.
func (p *Printer) Do(name string, fn func() error) error {
	n := len(p.Steps) + 1
	if p.Total > 0 {
		fmt.Fprintf(p.Out, "[%d/%d] %s\n", n, p.Total, name)
	} else {
		fmt.Fprintf(p.Out, "[%d] %s\n", n, name)
	}
	start := time.Now()
	err := fn()
	took := time.Since(start)
	p.Steps = append(p.Steps, Step{name, took, err})
	if err != nil {
		fmt.Fprintf(p.Out, "%sFAILED after %s: %v\n", Indent, took.Round(time.Millisecond), err)
		return fmt.Errorf("%s: %w", name, err)
	}
	fmt.Fprintf(p.Out, "%sok (%s)\n", Indent, took.Round(time.Millisecond))
	return nil
}

// Printf prints a line of detail under the current step.
func (p *Printer) Printf(format string, a ...any) {
	fmt.Fprintf(p.Out, Indent+format+"\n", a...)
}

// Elapsed is the time since the printer was made.
func (p *Printer) Elapsed() time.Duration { return time.Since(p.Start) }

// Indent is what detail under a step starts with.
const Indent = "      "

// Indented returns a writer that indents every line written to w, for the
// output of a command run as a step.
func Indented(w io.Writer) io.Writer { return &prefixWriter{w: w, prefix: Indent} }

type prefixWriter struct {
	w       io.Writer
	prefix  string
	midLine bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	var out bytes.Buffer
	for _, c := range b {
		if !p.midLine {
			out.WriteString(p.prefix)
		}
		out.WriteByte(c)
		p.midLine = c != '\n'
	}
	if _, err := p.w.Write(out.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}
