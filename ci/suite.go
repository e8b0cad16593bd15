package ci

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nbdlab/nbdlab/internal/command"
)

// Fuzzer names a fuzz target that the suite runs briefly.
type Fuzzer struct {
	Pkg, Name string
}

// Fuzzers returns the fuzz targets Test runs for FuzzTime each, after the
// unit tests have run their seed corpora.
func Fuzzers() []Fuzzer {
	return []Fuzzer{
		{"./nbd", "FuzzWire"},
		{"./nbd", "FuzzHandshake"},
		{"./nbd", "FuzzTransmission"},
		{"./cpio", "FuzzRead"},
		{"./qcow2", "FuzzOpen"},
	}
}

// FuzzTime is how long Test fuzzes each target.
const FuzzTime = 10 * time.Second

// Lint fails when gofmt would change a file, or go vet, staticcheck or
// actionlint (the CI workflows) reports anything.
func Lint(ctx context.Context, run command.Runner, w io.Writer) error {
	var out bytes.Buffer
	if err := run(ctx, "", &out, w, "gofmt", "-l", "."); err != nil {
		return fmt.Errorf("lint: %w", err)
	}
	if s := strings.TrimSpace(out.String()); s != "" {
		return fmt.Errorf("lint: gofmt would change:\n%s", s)
	}
	if err := run(ctx, "", w, w, "go", "vet", "-tags="+VM.Tags, "./..."); err != nil {
		return fmt.Errorf("lint: %w", err)
	}
	// The protocol library is portable: the client, the codec and the
	// server build everywhere, with Linux's fast paths behind build tags.
	for _, goos := range []string{"darwin", "freebsd"} {
		if err := run(ctx, "", w, w, "env", "GOOS="+goos, "go", "build", "./nbd/..."); err != nil {
			return fmt.Errorf("lint: nbd/ for %s: %w", goos, err)
		}
	}
	if err := run(ctx, "", w, w, "go", "tool", "staticcheck", "-tags="+VM.Tags, "./..."); err != nil {
		return fmt.Errorf("lint: %w", err)
	}
	if err := run(ctx, "", w, w, "go", "tool", "actionlint"); err != nil {
		return fmt.Errorf("lint: actionlint: %w", err)
	}
	fmt.Fprintln(w, "lint: gofmt, go vet, staticcheck and actionlint are clean; nbd/ builds for darwin and freebsd")
	return nil
}

// Tier is a set of tests chosen by build tags.
type Tier struct {
	Name    string
	Tags    string // for go test -tags; empty for the unit tier
	Timeout time.Duration
	Fuzz    bool // then run each fuzzer for FuzzTime
}

// The tiers. Unit needs neither root nor VMs and runs in under two
// minutes; VM adds the tests behind the "vm" build tag, which boot lab
// VMs or need root (cgroups, /lib/modules), runs the unit tests too, and
// fuzzes.
var (
	Unit = Tier{Name: "unit", Timeout: 10 * time.Minute}
	VM   = Tier{Name: "vm", Tags: "vm", Timeout: 80 * time.Minute, Fuzz: true}
)

// Args is the go test command line of the tier.
func (t Tier) Args() []string {
	args := []string{"test", "-count=1", "-timeout=" + t.Timeout.String()}
	if t.Tags != "" {
		args = append(args, "-tags="+t.Tags)
	}
	return append(args, "./...")
}

// Test runs the tier's tests, then, if the tier fuzzes, each fuzzer for
// FuzzTime.
func Test(ctx context.Context, run command.Runner, w io.Writer, tier Tier) error {
	if err := run(ctx, "", w, w, "go", tier.Args()...); err != nil {
		return fmt.Errorf("test %s: %w", tier.Name, err)
	}
	if !tier.Fuzz {
		return nil
	}
	for _, f := range Fuzzers() {
		args := []string{"test", "-run=^$", "-fuzz=^" + f.Name + "$", "-fuzztime=" + FuzzTime.String(), f.Pkg}
		for attempt := 1; ; attempt++ {
			var out bytes.Buffer
			err := run(ctx, "", io.MultiWriter(w, &out), io.MultiWriter(w, &out), "go", args...)
			if err == nil {
				break
			}
			if attempt == 1 && DeadlineRace(out.String()) {
				fmt.Fprintf(w, "test: fuzz %s ended on the fuzz coordinator's deadline race (go.dev/issue/75804, fixed in Go 1.27) with no failing input; once more\n", f.Name)
				continue
			}
			return fmt.Errorf("test: fuzz %s: %w", f.Name, err)
		}
	}
	return nil
}

// DeadlineRace reports whether a failed fuzz run's output is only Go's
// fuzz coordinator missing its own -fuzztime deadline (go.dev/issue/75804):
// "context deadline exceeded" and no failing input, panic or test error.
func DeadlineRace(out string) bool {
	if !strings.Contains(out, "context deadline exceeded") {
		return false
	}
	for _, real := range []string{"Failing input written", "panic:", "_test.go:", "fuzz_test.go"} {
		if strings.Contains(out, real) {
			return false
		}
	}
	return true
}

// Differential runs qcow2's differential test against qemu-img and
// qemu-io over that many random images, the first of seed seed (package qcow2,
// TestDifferential), ops operations each, and prints its tally.
func Differential(ctx context.Context, run command.Runner, w io.Writer, images, ops int, seed uint64) error {
	fmt.Fprintf(w, "qcow2 differential: %d images from seed %d, %d operations each (rerun one with -run 'TestDifferential/seedN$' -args -diff.images=%d -diff.seed=%d)\n", images, seed, ops, images, seed)
	timeout := time.Duration(images)*5*time.Second + 5*time.Minute
	err := run(ctx, "", w, w, "go", "test", "-count=1", "-timeout="+timeout.String(), "-run=^TestDifferential$", "-v", "./qcow2",
		"-args", fmt.Sprintf("-diff.images=%d", images), fmt.Sprintf("-diff.ops=%d", ops), fmt.Sprintf("-diff.seed=%d", seed))
	if err != nil {
		return fmt.Errorf("qcow2 differential from seed %d: %w", seed, err)
	}
	return nil
}
