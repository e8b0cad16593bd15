package nbd

import (
	"bytes"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The first errLogBurst errors are logged each, then one a second with
// the count of those left out; every error is counted; ENOTSUP is not
// an error worth a line.
func TestErrorLogRate(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	now := time.Unix(1000, 0)
	l := errorLog{now: func() time.Time { return now }}
	r := request{cmd: CmdWrite, off: 4096, length: 512}
	for range errLogBurst + 25 {
		l.record(log, "disk", r, ENOSPC, syscall.ENOSPC)
	}
	l.record(log, "disk", r, ENOTSUP, syscall.ENOTSUP)
	if n := strings.Count(buf.String(), "backend error"); n != errLogBurst {
		t.Fatalf("%d lines for %d errors in no time, want %d:\n%s", n, errLogBurst+25, errLogBurst, buf.String())
	}
	now = now.Add(errLogEvery)
	l.record(log, "disk", request{cmd: CmdRead, off: 8192, length: 4096}, EIO, syscall.EIO)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	last := lines[len(lines)-1]
	for _, want := range []string{"export=disk", "cmd=NBD_CMD_READ", "offset=8192", "length=4096", "errno=EIO", "not_logged_since=25"} {
		if !strings.Contains(last, want) {
			t.Errorf("line after a second %q lacks %q", last, want)
		}
	}
	if !strings.Contains(lines[0], "errno=ENOSPC") || !strings.Contains(lines[0], "offset=4096") {
		t.Errorf("first line %q", lines[0])
	}
	if got, want := l.summary(), "ENOSPC=35 EIO=1"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
}
