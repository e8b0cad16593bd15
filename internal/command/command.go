// Package command is the one way nbdlab runs other programs: a Runner
// that packages take as a field, so that tests can watch, answer or refuse
// the commands, and Exec, the Runner that really runs them.
package command

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"
)

// Runner runs name with args in dir (the current directory when empty),
// with the given output.
type Runner func(ctx context.Context, dir string, stdout, stderr io.Writer, name string, args ...string) error

// maxErrOutput bounds how much of a failed command's output its error
// carries: the end, where compilers and apt say what went wrong.
const maxErrOutput = 2000

// Exec is the Runner that really runs commands. With no stderr writer,
// what the command printed there ends its error.
func Exec(ctx context.Context, dir string, stdout, stderr io.Writer, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var errb strings.Builder
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, stdout, stderr
	// A child it left behind may hold the output pipes open: once the
	// command is gone (or ctx ended it), wait for them only so long.
	cmd.WaitDelay = 10 * time.Second
	if stderr == nil {
		cmd.Stderr = &errb
	}
	if err := cmd.Run(); err != nil {
		return Error(name, args, err, errb.String())
	}
	return nil
}

// Error is the error of a command that failed: its command line, why,
// and the end of what it printed.
func Error(name string, args []string, err error, output string) error {
	msg := strings.TrimSpace(output)
	if len(msg) > maxErrOutput {
		msg = "..." + msg[len(msg)-maxErrOutput:]
	}
	if msg != "" {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
}

// Output runs a command with run and returns its trimmed stdout; its
// stderr ends the error when it fails.
func Output(ctx context.Context, run Runner, name string, args ...string) (string, error) {
	var out strings.Builder
	if err := run(ctx, "", &out, nil, name, args...); err != nil {
		return "", err
	}
	return strings.TrimSpace(out.String()), nil
}

// Combined runs a command with run and returns everything it printed,
// trimmed; the error carries the output too.
func Combined(ctx context.Context, run Runner, name string, args ...string) (string, error) {
	var out strings.Builder
	err := run(ctx, "", &out, &out, name, args...)
	if err != nil {
		return strings.TrimSpace(out.String()), Error(name, args, err, out.String())
	}
	return strings.TrimSpace(out.String()), nil
}

// ErrMissingTool is wrapped by Require when a program is not installed.
var ErrMissingTool = errors.New("not installed")

// Require reports which of the named programs are not on PATH.
func Require(tools ...string) error {
	var missing []string
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s %w (go run mage.go deps installs it)", strings.Join(missing, ", "), ErrMissingTool)
	}
	return nil
}
