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
