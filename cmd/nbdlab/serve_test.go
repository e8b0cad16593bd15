package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/nbd"
)

// A record that cannot be written (a full disk: /dev/full) is not
// silently cut short: finish reports it, and serve exits with it.
func TestRecorderReportsFailedWrites(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rec, finish, err := recorder("/dev/full", log)
	if err != nil {
		t.Fatal(err)
	}
	rec(nbd.Recorded{Conn: 1, Cmd: "NBD_CMD_READ", Length: 512})
	if err := finish(); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Fatalf("finish after a failed write: %v, want the record reported incomplete", err)
	}
	// And one that can is complete.
	path := filepath.Join(t.TempDir(), "rec.jsonl")
	rec, finish, err = recorder(path, log)
	if err != nil {
		t.Fatal(err)
	}
	rec(nbd.Recorded{Conn: 1, Cmd: "NBD_CMD_READ", Length: 512})
	if err := finish(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), `"cmd":"NBD_CMD_READ"`) {
		t.Fatalf("record holds %q", b)
	}
}
