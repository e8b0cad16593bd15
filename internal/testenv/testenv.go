// Package testenv holds the rules every nbdlab test follows about its
// environment: a test that needs a tool asks for it with Need, and is
// skipped when the tool is missing, or fails when CI=true, where a skip
// would hide a missing install step; tests that run nbdlab get a static
// binary built from this tree with Nbdlab.
package testenv

import (
	"context"
	"github.com/nbdlab/nbdlab/internal/command"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nbdlab/nbdlab/internal/selfbuild"
)

// ErrMissingTool is wrapped by Require when a tool is not installed.
var ErrMissingTool = command.ErrMissingTool

// Require reports which of the named programs are not on PATH.
func Require(tools ...string) error { return command.Require(tools...) }

// InCI reports whether CI=true, where missing tools are failures.
func InCI() bool { return os.Getenv("CI") == "true" }

// Need skips t when a tool is missing, or fails it in CI.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	if err := Require(tools...); err != nil {
		Missing(t, err.Error())
	}
}

// Missing skips t because something it needs is missing, or fails it in
// CI.
func Missing(t testing.TB, why string) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=true and %s", why)
	}
	t.Skipf("skipping: %s", why)
}

var nbdlabOnce = sync.OnceValues(func() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return selfbuild.Nbdlab(ctx)
})

// Nbdlab returns the path of a static nbdlab built from this tree, built
// once per test process.
func Nbdlab(t testing.TB) string {
	t.Helper()
	bin, err := nbdlabOnce()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}
