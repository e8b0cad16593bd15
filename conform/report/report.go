package report

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

// Level is how strongly the specification says it: a failed MUST fails
// the run, a failed SHOULD is a finding.
type Level string

// Levels.
const (
	Must   Level = "MUST"
	Should Level = "SHOULD"
)

// Status is a check's outcome.
type Status string

// Outcomes.
const (
	Pass  Status = "pass"
	Fail  Status = "FAIL"
	Warn  Status = "warn"  // a SHOULD not met
	NA    Status = "n/a"   // the server does not offer what the check needs
	Flaky Status = "flaky" // failed in some of its runs, passed in others
	Error Status = "error" // not run: the server did not start
)

// Result is one check against one server.
type Result struct {
	ID     string        `json:"id"`
	Level  Level         `json:"level"`
	Status Status        `json:"status"`
	Detail string        `json:"detail,omitempty"`
	Took   time.Duration `json:"took_ns"`
	// Runs and Failed count the runs of a repeated check (--repeat) and
	// those that failed; both are zero for a check run once.
	Runs   int `json:"runs,omitempty"`
	Failed int `json:"failed,omitempty"`
}

// Cell is how the matrix shows the result: its status, with how often
// a flaky one failed ("flaky 2/20").
func (r Result) Cell() string {
	if r.Status == Flaky {
		return fmt.Sprintf("flaky %d/%d", r.Failed, r.Runs)
	}
	return string(r.Status)
}

// Repeated is the result of one check run several times (runs[i] is
// round i+1): FAIL when every run failed, flaky when some did, else warn
// when a run missed a SHOULD, n/a when none applied, else pass. The
// detail holds each failure's and warning's, by round.
func Repeated(runs []Result) Result {
	if len(runs) == 1 {
		return runs[0]
	}
	out := Result{ID: runs[0].ID, Level: runs[0].Level, Runs: len(runs)}
	var details []string
	count := map[Status]int{}
	for i, r := range runs {
		out.Took += r.Took
		count[r.Status]++
		switch r.Status {
		case Fail:
			details = append(details, fmt.Sprintf("round %d: %s", i+1, r.Detail))
		case Warn:
			details = append(details, fmt.Sprintf("round %d (warn): %s", i+1, r.Detail))
		}
	}
	out.Failed = count[Fail]
	out.Detail = strings.Join(details, "\n")
	switch {
	case out.Failed == len(runs):
		out.Status = Fail
	case out.Failed > 0:
		out.Status = Flaky
	case count[Warn] > 0:
		out.Status = Warn
	case count[NA] == len(runs):
		out.Status, out.Detail = NA, runs[0].Detail
	default:
		out.Status = Pass
	}
	return out
}

// Target is every check against one server.
type Target struct {
	Name    string   `json:"name"`
	URI     string   `json:"uri"`
	Results []Result `json:"results"`
	// Error says why no check ran ("server did not start: ..."), once for
	// every result whose status is Error. Note is worth knowing but
	// changed no result (a server that started only at its second try).
	Error string `json:"error,omitempty"`
	Note  string `json:"note,omitempty"`
}

// Report is a run against one or more servers (Kind "server"), or of
// the kernel client against servers on one or more kernels (Kind
// "kernel", a target a kernel and a server).
type Report struct {
	Kind    string      `json:"kind,omitempty"`
	Checks  []CheckInfo `json:"checks"`
	Targets []Target    `json:"targets"`
}

// Decode reads a report written by WriteJSON.
func Decode(r io.Reader) (*Report, error) {
	var rep Report
	if err := json.NewDecoder(r).Decode(&rep); err != nil {
		return nil, fmt.Errorf("conform: report: %w", err)
	}
	for _, t := range rep.Targets {
		if len(t.Results) != len(rep.Checks) {
			return nil, fmt.Errorf("conform: report: target %s has %d results for %d checks", t.Name, len(t.Results), len(rep.Checks))
		}
	}
	return &rep, nil
}

// Merge adds other's targets to r, each result under its check; a check
// one side did not run is n/a on that side.
func (r *Report) Merge(other *Report) {
	index := map[string]int{}
	for i, c := range r.Checks {
		index[c.ID] = i
	}
	for _, c := range other.Checks {
		if _, ok := index[c.ID]; !ok {
			index[c.ID] = len(r.Checks)
			r.Checks = append(r.Checks, c)
			for i := range r.Targets {
				r.Targets[i].Results = append(r.Targets[i].Results, Result{ID: c.ID, Level: c.Level, Status: NA, Detail: "not run"})
			}
		}
	}
	for _, t := range other.Targets {
		results := make([]Result, len(r.Checks))
		for i, c := range r.Checks {
			results[i] = Result{ID: c.ID, Level: c.Level, Status: NA, Detail: "not run"}
		}
		for _, res := range t.Results {
			results[index[res.ID]] = res
		}
		t.Results = results
		r.Targets = append(r.Targets, t)
	}
}

// CheckInfo describes a check.
type CheckInfo struct {
	ID    string `json:"id"`
	Level Level  `json:"level"`
	What  string `json:"what"`
}

// MustFailures counts the failed MUST checks of every target, flaky ones
// included: a MUST met only sometimes is not met.
func (r *Report) MustFailures() int {
	n := 0
	for _, t := range r.Targets {
		for _, res := range t.Results {
			if res.Status == Fail || res.Status == Flaky {
				n++
			}
		}
	}
	return n
}

// NotRun counts the targets whose checks did not run (Target.Error).
func (r *Report) NotRun() int {
	n := 0
	for _, t := range r.Targets {
		if t.Error != "" {
			n++
		}
	}
	return n
}

// WriteMatrix prints one row a check and one column a server, then the
// details of everything that did not pass.
func (r *Report) WriteMatrix(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "CHECK\tLEVEL")
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "\t%s", t.Name)
	}
	fmt.Fprintln(tw)
	for i, c := range r.Checks {
		fmt.Fprintf(tw, "%s\t%s", c.ID, c.Level)
		for _, t := range r.Targets {
			fmt.Fprintf(tw, "\t%s", t.Results[i].Cell())
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, t := range r.Targets {
		if t.Error != "" {
			fmt.Fprintf(w, "%s: %s (its checks are \"error\": not run)\n", t.Name, t.Error)
		}
		if t.Note != "" {
			fmt.Fprintf(w, "%s: note: %s\n", t.Name, t.Note)
		}
		for _, res := range t.Results {
			if res.Status != Pass && res.Detail != "" {
				fmt.Fprintf(w, "%s %s %s: %s\n", t.Name, res.ID, res.Cell(), res.Detail)
			}
		}
	}
	_, err := fmt.Fprintf(w, "%d MUST violations%s\n", r.MustFailures(), notRun(r.NotRun()))
	return err
}

func notRun(n int) string {
	switch n {
	case 0:
		return ""
	case 1:
		return "; 1 server not checked (above: why)"
	}
	return fmt.Sprintf("; %d servers not checked (above: why)", n)
}

// WriteJSON writes the report as JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteMarkdown writes the matrix as a Markdown table, with what each
// check checks and the details below.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	b.WriteString("| check | level | what |")
	for _, t := range r.Targets {
		fmt.Fprintf(&b, " %s |", t.Name)
	}
	b.WriteString("\n|---|---|---|" + strings.Repeat("---|", len(r.Targets)) + "\n")
	for i, c := range r.Checks {
		fmt.Fprintf(&b, "| %s | %s | %s |", c.ID, c.Level, c.What)
		for _, t := range r.Targets {
			fmt.Fprintf(&b, " %s |", t.Results[i].Cell())
		}
		b.WriteString("\n")
	}
	first := true
	heading := func() {
		if first {
			b.WriteString("\nDetails:\n\n")
			first = false
		}
	}
	for _, t := range r.Targets {
		if t.Error != "" {
			heading()
			fmt.Fprintf(&b, "- %s: %s (its checks are \"error\": not run)\n", t.Name, t.Error)
		}
		if t.Note != "" {
			heading()
			fmt.Fprintf(&b, "- %s: note: %s\n", t.Name, t.Note)
		}
		for _, res := range t.Results {
			if res.Status == Pass || res.Detail == "" {
				continue
			}
			heading()
			fmt.Fprintf(&b, "- %s, %s (%s): %s\n", t.Name, res.ID, res.Cell(), res.Detail)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJUnit writes the report as JUnit XML: a suite a server, a case a
// check; failed MUSTs are failures, unmet SHOULDs are in the case's
// output, inapplicable checks are skipped.
func (r *Report) WriteJUnit(w io.Writer) error {
	type failure struct {
		Message string `xml:"message,attr"`
	}
	type skipped struct {
		Message string `xml:"message,attr"`
	}
	type errored struct {
		Message string `xml:"message,attr"`
	}
	type testcase struct {
		Name      string   `xml:"name,attr"`
		Classname string   `xml:"classname,attr"`
		Time      float64  `xml:"time,attr"`
		Failure   *failure `xml:"failure,omitempty"`
		Skipped   *skipped `xml:"skipped,omitempty"`
		Error     *errored `xml:"error,omitempty"`
		SystemOut string   `xml:"system-out,omitempty"`
	}
	type testsuite struct {
		Name     string     `xml:"name,attr"`
		Tests    int        `xml:"tests,attr"`
		Failures int        `xml:"failures,attr"`
		Errors   int        `xml:"errors,attr"`
		Skipped  int        `xml:"skipped,attr"`
		Cases    []testcase `xml:"testcase"`
	}
	type testsuites struct {
		XMLName xml.Name    `xml:"testsuites"`
		Suites  []testsuite `xml:"testsuite"`
	}
	var out testsuites
	for _, t := range r.Targets {
		s := testsuite{Name: t.Name, Tests: len(t.Results)}
		for _, res := range t.Results {
			kind := r.Kind
			if kind == "" {
				kind = "server"
			}
			c := testcase{Name: res.ID, Classname: "nbd." + kind + "." + t.Name, Time: res.Took.Seconds()}
			switch res.Status {
			case Fail:
				c.Failure = &failure{Message: res.Detail}
				s.Failures++
			case Flaky:
				c.Failure = &failure{Message: res.Cell() + ": " + res.Detail}
				s.Failures++
			case Error:
				c.Error = &errored{Message: t.Error}
				s.Errors++
			case NA:
				c.Skipped = &skipped{Message: res.Detail}
				s.Skipped++
			case Warn:
				c.SystemOut = "SHOULD not met: " + res.Detail
			}
			s.Cases = append(s.Cases, c)
		}
		out.Suites = append(out.Suites, s)
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

// Read reads a report written by WriteJSON.
func Read(path string) (*Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Decode(f)
}

// WriteFiles writes report.json, report.md and junit.xml into dir.
func (r *Report) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("conform: %w", err)
	}
	return errors.Join(
		WriteFile(filepath.Join(dir, "report.json"), r.WriteJSON),
		WriteFile(filepath.Join(dir, "report.md"), r.WriteMarkdown),
		WriteFile(filepath.Join(dir, "junit.xml"), r.WriteJUnit))
}

// WriteFile writes a report to path with write (WriteJSON, WriteMarkdown,
// WriteJUnit).
func WriteFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("conform: %w", err)
	}
	if err := errors.Join(write(f), f.Close()); err != nil {
		return fmt.Errorf("conform: write %s: %w", path, err)
	}
	return nil
}
