package kernelsuite

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/conform/report"
)

var targetCases = []kernelCase{{id: "a"}, {id: "b"}, {id: "c", once: "the kernel's own"}}

// starter fails its first fails starts.
func starter(fails int) (func() (*runningServer, error), *int) {
	calls := 0
	return func() (*runningServer, error) {
		calls++
		if calls <= fails {
			return nil, fmt.Errorf("read server greeting: connection reset by peer (start %d)", calls)
		}
		return &runningServer{}, nil
	}, &calls
}

// A server whose start fails twice is reported once, as not started: its
// cases are "error", no case counts as a MUST failure of the kernel, and
// with nbdlab's server the run still fails.
func TestServerThatDoesNotStart(t *testing.T) {
	var out bytes.Buffer
	start, calls := starter(2)
	ran := 0
	run := func(c kernelCase, _ *runningServer) report.Result {
		ran++
		return report.Result{ID: c.id, Status: report.Pass}
	}
	tg := runTarget(Options{Out: &out}, "6.1", Server{Name: "nbdlab-file"}, "nbdlab-mem", targetCases, start, run)
	if *calls != startAttempts || ran != 0 {
		t.Fatalf("started %d times and ran %d cases; want %d starts, no case", *calls, ran, startAttempts)
	}
	if !strings.HasPrefix(tg.Error, "server did not start: ") || !strings.Contains(tg.Error, "(start 2)") {
		t.Errorf("target error %q, want the last start's reason", tg.Error)
	}
	for _, r := range tg.Results {
		want := report.Error
		if r.ID == "c" {
			want = report.NA // not this server's case at all
		}
		if r.Status != want || r.Detail != "" && want == report.Error {
			t.Errorf("%s: %s %q, want %s with no detail of its own", r.ID, r.Status, r.Detail, want)
		}
	}
	rep := &report.Report{Kind: "kernel", Checks: []report.CheckInfo{{ID: "a"}, {ID: "b"}, {ID: "c"}}, Targets: []report.Target{tg}}
	if n := rep.MustFailures(); n != 0 {
		t.Errorf("%d MUST failures of the kernel, want none", n)
	}
	if passed(rep, false) {
		t.Error("nbdlab's server did not start, yet the run passed")
	}
	var m bytes.Buffer
	rep.WriteMatrix(&m)
	if got := strings.Count(m.String(), "did not start"); got != 1 {
		t.Errorf("matrix names the failed start %d times, want once and in the summary:\n%s", got, m.String())
	}
	if !strings.Contains(m.String(), "0 MUST violations; 1 server not checked") {
		t.Errorf("summary:\n%s", m.String())
	}
	// A peer that does not start does not fail the run without --strict.
	rep.Targets[0].Name = "6.1/qemu-nbd"
	if !passed(rep, false) || passed(rep, true) {
		t.Error("a peer that did not start must fail the run with --strict only")
	}
}

// A server that starts at its second try runs every case, and the report
// says it needed two.
func TestServerStartedAtSecondTry(t *testing.T) {
	var out bytes.Buffer
	start, _ := starter(1)
	run := func(c kernelCase, _ *runningServer) report.Result {
		return report.Result{ID: c.id, Status: report.Pass}
	}
	tg := runTarget(Options{Out: &out}, "6.1", Server{Name: "qemu-nbd"}, "qemu-nbd", targetCases, start, run)
	if tg.Error != "" || !strings.Contains(tg.Note, "second attempt") {
		t.Errorf("error %q, note %q", tg.Error, tg.Note)
	}
	for _, r := range tg.Results {
		if r.Status != report.Pass {
			t.Errorf("%s: %s", r.ID, r.Status)
		}
	}
}

// --repeat: a case that failed in some rounds is flaky k/N with each
// failure's detail, and fails the run; --until-fail stops at the first.
func TestRepeat(t *testing.T) {
	failIn := map[int]bool{3: true, 7: true}
	for _, tc := range []struct {
		name       string
		o          Options
		wantRounds int
		wantCell   string
	}{
		{"repeat", Options{Repeat: 10}, 10, "flaky 2/10"},
		{"until-fail", Options{Repeat: 10, UntilFail: true}, 3, "flaky 1/3"},
		{"once", Options{}, 1, "pass"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			tc.o.Out = &out
			start, _ := starter(0)
			round := map[string]int{}
			run := func(c kernelCase, _ *runningServer) report.Result {
				round[c.id]++
				if c.id == "a" && failIn[round[c.id]] {
					return report.Result{ID: c.id, Status: report.Fail, Detail: fmt.Sprintf("disconnected at once (%d)", round[c.id])}
				}
				return report.Result{ID: c.id, Status: report.Pass}
			}
			tg := runTarget(tc.o, "6.12", Server{Name: "nbdlab-file"}, "nbdlab-file", targetCases, start, run)
			if round["a"] != tc.wantRounds || round["c"] != tc.wantRounds {
				t.Fatalf("ran a %d and c %d times, want %d", round["a"], round["c"], tc.wantRounds)
			}
			a, b := tg.Results[0], tg.Results[1]
			if a.Cell() != tc.wantCell || b.Status != report.Pass {
				t.Errorf("a is %q, b %q; want %q and pass", a.Cell(), b.Cell(), tc.wantCell)
			}
			if tc.wantCell != "pass" && !strings.Contains(a.Detail, "round 3: disconnected at once (3)") {
				t.Errorf("a's detail does not give round 3's failure: %q", a.Detail)
			}
			rep := &report.Report{Targets: []report.Target{tg}}
			if passed(rep, false) == (tc.wantCell != "pass") {
				t.Errorf("passed = %v with a %s case", passed(rep, false), a.Cell())
			}
		})
	}
}

func TestRepeated(t *testing.T) {
	p, f, w, na := report.Result{Status: report.Pass}, report.Result{Status: report.Fail, Detail: "x"}, report.Result{Status: report.Warn}, report.Result{Status: report.NA, Detail: "no"}
	for _, tc := range []struct {
		runs []report.Result
		want string
	}{
		{[]report.Result{p, p, p}, "pass"},
		{[]report.Result{f, f}, "FAIL"},
		{[]report.Result{p, f, p}, "flaky 1/3"},
		{[]report.Result{p, w}, "warn"},
		{[]report.Result{na, na}, "n/a"},
		{[]report.Result{f}, "FAIL"},
	} {
		if got := report.Repeated(tc.runs).Cell(); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.runs, got, tc.want)
		}
	}
}
