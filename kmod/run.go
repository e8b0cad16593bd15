package kmod

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
)

// Runner runs a command in dir with the given output; tests substitute
// their own to watch or refuse commands.
type Runner func(ctx context.Context, dir string, stdout, stderr io.Writer, name string, args ...string) error

// Exec is the Runner that really runs commands.
// With no stderr writer, what the command printed there ends its error.
func Exec(ctx context.Context, dir string, stdout, stderr io.Writer, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var errb strings.Builder
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, stdout, stderr
	if stderr == nil {
		cmd.Stderr = &errb
	}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if len(msg) > 2000 {
			msg = "..." + msg[len(msg)-2000:]
		}
		if msg != "" {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
		}
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

// output runs a command and returns its trimmed stdout.
func output(ctx context.Context, run Runner, name string, args ...string) (string, error) {
	var out, errb strings.Builder
	if err := run(ctx, "", &out, &errb, name, args...); err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}
