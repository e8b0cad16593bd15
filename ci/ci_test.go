package ci

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
)

func TestMissing(t *testing.T) {
	run := func(_ context.Context, _ string, stdout, _ io.Writer, name string, args ...string) error {
		if name != "dpkg-query" {
			t.Fatalf("ran %s", name)
		}
		io.WriteString(stdout, "fio ii \nnbdkit rc \nqemu-utils:amd64 ii \n")
		return nil
	}
	got, err := Missing(context.Background(), run, []string{"fio", "nbdkit", "qemu-utils", "nbd-server"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "nbdkit nbd-server" {
		t.Fatalf("missing %v, want nbdkit (removed, config left) and nbd-server (unknown)", got)
	}
}

func TestDepsDoesNothingWhenAllInstalled(t *testing.T) {
	run := func(_ context.Context, _ string, stdout, _ io.Writer, name string, args ...string) error {
		if name != "dpkg-query" {
			t.Fatalf("ran %s %v; want only dpkg-query", name, args)
		}
		io.WriteString(stdout, "a ii \nb ii \n")
		return nil
	}
	var out bytes.Buffer
	if err := Deps(context.Background(), run, &out, []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "all 2 Debian packages are installed") {
		t.Fatalf("output %q", out.String())
	}
}

func TestDeadlineRace(t *testing.T) {
	for _, tt := range []struct {
		name, out string
		want      bool
	}{
		{"the coordinator's race", "fuzz: elapsed: 10s, execs: 571157 (45626/sec)\n--- FAIL: FuzzRead (10.11s)\n    context deadline exceeded\nFAIL\n", true},
		{"a crasher", "--- FAIL: FuzzRead (0.20s)\n    --- FAIL: FuzzRead (0.00s)\n        cpio_test.go:40: mismatch\n    Failing input written to testdata/fuzz/FuzzRead/abc\n", false},
		{"a panic near the deadline", "panic: runtime error: index out of range\n    context deadline exceeded\n", false},
		{"another failure", "--- FAIL: FuzzRead (1.00s)\n    exit status 2\n", false},
	} {
		if got := DeadlineRace(tt.out); got != tt.want {
			t.Errorf("%s: DeadlineRace = %v, want %v", tt.name, got, tt.want)
		}
	}
}
