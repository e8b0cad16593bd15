package harness

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Need skips t when a tool is missing, or fails it in CI.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	if err := Require(tools...); err != nil {
		if InCI() {
			t.Fatalf("CI=true and %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
}

var nbdlabOnce = sync.OnceValues(func() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return BuildNbdlabCached(ctx)
})

// Nbdlab returns the path of an nbdlab binary built from this tree, built
// once per test process. It lives in the user cache directory, not under
// /tmp, so that lab VMs (whose /tmp is their own) find it too.
func Nbdlab(t testing.TB) string {
	t.Helper()
	bin, err := nbdlabOnce()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// Serve starts "nbdlab serve" for the test. When the test ends it sends
// SIGTERM and fails the test unless the server exits 0.
func Serve(t testing.TB, args ...string) *Server {
	t.Helper()
	s, err := StartServe(context.Background(), Nbdlab(t), args...)
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

// Run runs a command and fails t unless it exits 0; it returns stdout.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := RunErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// RunErr runs a command with a two-minute limit and returns its combined
// output.
func RunErr(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// python3-libnbd lives in the system Python, which may not be first on
	// PATH (pyenv).
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	b, err := cmd.CombinedOutput()
	return string(b), err
}
