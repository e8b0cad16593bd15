package ci

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdlab/nbdlab/internal/testenv"
)

// maxTracked is the largest file the repository may hold: anything bigger
// is a build output (the nbdlab binary, a report, a kernel tree) that
// belongs in .gitignore.
const maxTracked = 1 << 20

func TestNoLargeTrackedFiles(t *testing.T) {
	testenv.Need(t, "git")
	out, err := exec.Command("git", "-C", "..", "ls-files", "-z").Output()
	if err != nil {
		testenv.Missing(t, "the tree is not a git checkout: "+err.Error())
	}
	for _, name := range bytes.Split(bytes.TrimRight(out, "\x00"), []byte{0}) {
		fi, err := os.Lstat(filepath.Join("..", string(name)))
		if err != nil {
			continue // deleted in the work tree, not yet committed
		}
		if fi.Size() > maxTracked {
			t.Errorf("%s is tracked and %d bytes (over 1 MiB): a build output? git rm --cached it and add it to .gitignore", name, fi.Size())
		}
	}
}

// TestWorkflowGoFromGoMod: every job of the CI workflow that runs Go takes
// its version from go.mod; Debian's golang-go is older than go.mod asks.
func TestWorkflowGoFromGoMod(t *testing.T) {
	wf, err := os.ReadFile(filepath.Join("..", ".github", "workflows", "ci.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(wf, []byte("golang-go")) {
		t.Error("ci.yml installs Debian's golang-go, which is older than go.mod's go line: use actions/setup-go with go-version-file: go.mod")
	}
	jobs := bytes.Count(wf, []byte("runs-on:"))
	setups := bytes.Count(wf, []byte("go-version-file: go.mod"))
	if setups != jobs {
		t.Errorf("ci.yml has %d jobs and %d setup-go steps with go-version-file: go.mod; want one in each", jobs, setups)
	}
}

// TestBinaryHoldsNoTestCode: nothing the nbdlab binary is built from
// imports package testing (test kits stay in _test files and *test
// packages).
func TestBinaryHoldsNoTestCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "../cmd/nbdlab").Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/nbdlab: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "testing" || strings.HasSuffix(pkg, "/testenv") || strings.HasSuffix(pkg, "test") && strings.HasPrefix(pkg, "github.com/nbdlab/") {
			t.Errorf("the nbdlab binary is built with %s", pkg)
		}
	}
}
