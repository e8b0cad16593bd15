package harness

import (
	"context"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/internal/command"
	"github.com/nbdlab/nbdlab/internal/testenv"
	"github.com/nbdlab/nbdlab/servers"
)

// Serve starts "nbdlab serve" for the test. When the test ends it sends
// SIGTERM and fails the test unless the server exits 0.
func Serve(t testing.TB, args ...string) *servers.Nbdlab {
	t.Helper()
	s, err := servers.StartServe(context.Background(), testenv.Nbdlab(t), args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(30 * time.Second); err != nil {
			t.Errorf("nbdlab serve after SIGTERM: %v\n%s", err, s.Output())
		}
		if t.Failed() {
			t.Logf("nbdlab serve output:\n%s", s.Output())
		}
	})
	return s
}

// Run runs a command and fails t unless it exits 0; it returns what the
// command printed.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := RunErr(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// RunErr runs a command with a two-minute limit and returns everything
// it printed; the error carries the output too.
func RunErr(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return command.Combined(ctx, command.Exec, name, args...)
}
