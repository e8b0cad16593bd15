package kernelsuite

import (
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/conform/report"
	"github.com/nbdlab/nbdlab/nbd"
)

func rq(conn uint64, cmd, flags string, off uint64, length uint32) nbd.Recorded {
	return nbd.Recorded{Conn: conn, Cmd: "NBD_CMD_" + cmd, Flags: flags, Offset: off, Length: length}
}

// TestCheckRules shows each rule able to fail: a well-behaved log passes,
// and each broken one fails naming what is wrong.
func TestCheckRules(t *testing.T) {
	facts := exportFacts{Size: 1 << 20, Block: 512, MaxPayload: 65536,
		Flags: nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendTrim}
	good := []nbd.Recorded{
		rq(1, "WRITE", "NBD_CMD_FLAG_FUA", 0, 4096), rq(1, "READ", "", 4096, 65536), rq(1, "FLUSH", "", 0, 0),
		rq(2, "TRIM", "", 1<<19, 1<<19), rq(1, "DISC", "", 0, 0), rq(2, "DISC", "", 0, 0),
	}
	if err := checkRules(good, facts); err != nil {
		t.Fatalf("a good log fails: %v", err)
	}
	for _, tt := range []struct {
		name string
		req  nbd.Recorded
		want string
	}{
		{"past the end", rq(1, "READ", "", 1<<20-512, 1024), "past the end"},
		{"unaligned offset", rq(1, "WRITE", "", 100, 512), "not aligned"},
		{"unaligned length", rq(1, "READ", "", 0, 100), "not aligned"},
		{"too long", rq(1, "WRITE", "", 0, 131072), "maximum payload"},
		{"not advertised", rq(1, "WRITE_ZEROES", "", 0, 4096), "did not advertise"},
		{"flush with a length", rq(1, "FLUSH", "", 0, 512), "carries no offset"},
		{"NO_HOLE on a write", rq(1, "WRITE", "NBD_CMD_FLAG_NO_HOLE", 0, 512), "NO_HOLE"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			log := append([]nbd.Recorded{tt.req}, good...)
			if err := checkRules(log, facts); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one saying %q", err, tt.want)
			}
		})
	}
	noFUA := facts
	noFUA.Flags &^= nbd.FlagSendFUA
	if err := checkRules(good, noFUA); err == nil || !strings.Contains(err.Error(), "FUA without") {
		t.Errorf("FUA the server did not advertise: err = %v", err)
	}
	after := append(append([]nbd.Recorded{}, good...), rq(1, "READ", "", 0, 512))
	if err := checkRules(after, facts); err == nil || !strings.Contains(err.Error(), "after NBD_CMD_DISC") {
		t.Errorf("a request after DISC: err = %v", err)
	}
}

func TestWantRequestAndDiscLast(t *testing.T) {
	log := []nbd.Recorded{rq(1, "WRITE", "", 0, 4096), rq(1, "WRITE", "", 4096, 4096), rq(1, "DISC", "", 0, 0)}
	err := wantRequest(log, "NBD_CMD_FLUSH", "", "fsync")
	if err == nil || !strings.Contains(err.Error(), "fsync sent no NBD_CMD_FLUSH; the server saw: NBD_CMD_WRITE x2, NBD_CMD_DISC x1") {
		t.Errorf("a log without FLUSH: %v", err)
	}
	if err := wantRequest(log, "NBD_CMD_WRITE", "FUA", "O_DSYNC"); err == nil {
		t.Error("a log without FUA passes")
	}
	if err := wantRequest(log, "NBD_CMD_WRITE", "", "write"); err != nil {
		t.Errorf("a log with the write: %v", err)
	}
	if err := discLast(log); err != nil {
		t.Errorf("a log ending in DISC: %v", err)
	}
	if err := discLast(log[:2]); err == nil || !strings.Contains(err.Error(), "ended with NBD_CMD_WRITE") {
		t.Errorf("a log without DISC: %v", err)
	}
}

// TestReportMerge puts each kernel's results under the right checks.
func TestReportMerge(t *testing.T) {
	a := &report.Report{Kind: "kernel", Checks: []report.CheckInfo{{ID: "x"}, {ID: "y"}},
		Targets: []report.Target{{Name: "k1/s", Results: []report.Result{{ID: "x", Status: report.Pass}, {ID: "y", Status: report.Fail}}}}}
	b := &report.Report{Checks: []report.CheckInfo{{ID: "y"}, {ID: "z"}},
		Targets: []report.Target{{Name: "k2/s", Results: []report.Result{{ID: "y", Status: report.Pass}, {ID: "z", Status: report.NA}}}}}
	m := &report.Report{Kind: "kernel"}
	m.Merge(a)
	m.Merge(b)
	var got []string
	for _, tg := range m.Targets {
		var s []string
		for i, r := range tg.Results {
			s = append(s, m.Checks[i].ID+"="+string(r.Status))
		}
		got = append(got, tg.Name+": "+strings.Join(s, " "))
	}
	want := []string{"k1/s: x=pass y=FAIL z=n/a", "k2/s: x=n/a y=pass z=n/a"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("merged:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !passed(m, false) || passed(m, true) {
		t.Error("a peer's failure must fail the run with strict only")
	}
	m.Targets[0].Name = "k1/nbdlab-mem"
	if passed(m, false) {
		t.Error("a failure with nbdlab's server must fail the run")
	}
}
