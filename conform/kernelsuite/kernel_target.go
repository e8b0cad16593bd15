package kernelsuite

import (
	"fmt"
	"time"

	"github.com/nbdlab/nbdlab/conform/report"
)

// startAttempts is how often a server is started before its column is
// reported as not started: once more than once, because under TCG a
// peer may miss its first start (qemu-nbd resetting the first connection),
// never more, so that a server that cannot start is named at once.
const startAttempts = 2

// runTarget runs the cases against one server on this kernel: starts it
// (retrying once, and saying so), runs each case o.Repeat times (until
// the first failure with o.UntilFail), and returns the target. A server
// that does not start is reported once, in Target.Error, and its cases
// are "error", not failures of the kernel.
func runTarget(o Options, release string, spec Server, ref string, cases []kernelCase,
	start func() (*runningServer, error), runOne func(kernelCase, *runningServer) report.Result) report.Target {
	t := report.Target{Name: release + "/" + spec.Name, URI: spec.What}
	fmt.Fprintf(o.Out, "-- %s\n", t.Name)
	began := time.Now()
	var srv *runningServer
	var errs []error
	for attempt := 1; attempt <= startAttempts && srv == nil; attempt++ {
		s, err := start()
		if err != nil {
			errs = append(errs, err)
			fmt.Fprintf(o.Out, "   server did not start (attempt %d of %d): %s\n", attempt, startAttempts, firstLine(err.Error()))
			continue
		}
		srv = s
	}
	switch {
	case srv == nil:
		t.Error = "server did not start: " + errs[len(errs)-1].Error()
	case len(errs) > 0:
		t.Note = "the server started at its second attempt; the first failed: " + errs[0].Error()
	}
	// A case that does not run with this server has the same answer in
	// every round; the others run each round.
	runs := make([][]report.Result, len(cases))
	fixed := make([]bool, len(cases))
	for i, c := range cases {
		fixed[i] = true
		switch {
		case c.once != "" && !o.EveryServer && spec.Name != ref:
			runs[i] = []report.Result{{ID: c.id, Level: report.Must, Status: report.NA,
				Detail: fmt.Sprintf("%s, run once per kernel with %s (--every-server runs it with each)", c.once, ref)}}
		case srv == nil:
			runs[i] = []report.Result{{ID: c.id, Level: report.Must, Status: report.Error}}
		default:
			fixed[i] = false
		}
	}
	rounds := max(o.Repeat, 1)
	for round := 1; round <= rounds && srv != nil; round++ {
		failed := false
		for i, c := range cases {
			if fixed[i] {
				continue
			}
			res := runOne(c, srv)
			runs[i] = append(runs[i], res)
			failed = failed || res.Status == report.Fail
			prefix := ""
			if rounds > 1 {
				prefix = fmt.Sprintf("[%d/%d] ", round, rounds)
			}
			fmt.Fprintf(o.Out, "   %s%-34s %-4s %s\n", prefix, c.id, res.Status, firstLine(res.Detail))
		}
		if failed && o.UntilFail {
			fmt.Fprintf(o.Out, "   --until-fail: stopping after round %d\n", round)
			break
		}
	}
	for i := range cases {
		t.Results = append(t.Results, report.Repeated(runs[i]))
	}
	if srv != nil {
		srv.close()
	}
	fmt.Fprintf(o.Out, "-- %s: %s\n", t.Name, time.Since(began).Round(time.Second))
	return t
}
