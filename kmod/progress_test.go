package kmod

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestMakeProgress(t *testing.T) {
	var log, out bytes.Buffer
	clock := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	p := newMakeProgress(&log, &out, "make modules_prepare")
	p.now, p.last = func() time.Time { return clock }, clock
	p.Write([]byte("  HOSTCC  scripts/basic/fixdep\n  CC      scripts/mod/empty.o\nmake[1]: Entering directory\n"))
	if out.Len() != 0 {
		t.Fatalf("progress before the interval: %q", out.String())
	}
	clock = clock.Add(11 * time.Second)
	p.Write([]byte("  LD      scripts/mod/modpost\n  CC   drivers/bl")) // a line cut in two
	p.Write([]byte("ock/nbd.o\n"))
	if got := out.String(); got != "      make modules_prepare: 3 steps so far (LD scripts/mod/modpost)\n" {
		t.Errorf("progress %q", got)
	}
	if !strings.Contains(log.String(), "drivers/block/nbd.o") || !strings.Contains(log.String(), "Entering directory") {
		t.Errorf("the log lost output: %q", log.String())
	}
}
