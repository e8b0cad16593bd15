package command

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
)

func TestExec(t *testing.T) {
	for _, tt := range []struct {
		name    string
		args    []string
		run     func(context.Context, Runner, string, ...string) (string, error)
		want    string
		wantErr string
	}{
		{name: "stdout", args: []string{"-c", "echo hi; echo warn >&2"}, run: Output, want: "hi"},
		{name: "stderr ends the error", args: []string{"-c", "echo out; echo broken >&2; exit 3"}, run: Output,
			wantErr: "sh -c echo out; echo broken >&2; exit 3: exit status 3: broken"},
		{name: "combined", args: []string{"-c", "echo a; echo b >&2"}, run: Combined, want: "a\nb"},
		{name: "combined failure carries the output", args: []string{"-c", "echo why; exit 1"}, run: Combined,
			want: "why", wantErr: "exit status 1: why"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.run(context.Background(), Exec, "sh", tt.args...)
			if tt.wantErr != "" {
				var ee *exec.ExitError
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, &ee) {
					t.Fatalf("err = %v; want one that wraps *exec.ExitError and says %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("output %q, want %q", got, tt.want)
			}
		})
	}
}

func TestErrorKeepsTheEnd(t *testing.T) {
	out := strings.Repeat("x", 3*maxErrOutput) + "the cause"
	err := Error("make", []string{"-j2"}, errors.New("exit status 2"), out)
	if !strings.HasSuffix(err.Error(), "the cause") || len(err.Error()) > maxErrOutput+100 {
		t.Fatalf("error of %d bytes does not end with the cause", len(err.Error()))
	}
}
