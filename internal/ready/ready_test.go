package ready

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestMain lets this test binary be the child: READY_TEST_SAY is what it
// does with descriptor 3.
func TestMain(m *testing.M) {
	switch say := os.Getenv("READY_TEST_SAY"); say {
	case "":
		os.Exit(m.Run())
	case "ok":
		Open(3).OK("unix:/run/a.sock 127.0.0.1:40000")
	case "error":
		Open(3).Fail(errors.New("listen \"unix:/x\": permission denied\nsecond line"))
	case "hang":
		time.Sleep(time.Minute)
	}
	os.Exit(0)
}

func TestWait(t *testing.T) {
	for _, tt := range []struct {
		say, want, wantErr string
	}{
		{say: "ok", want: "unix:/run/a.sock 127.0.0.1:40000"},
		{say: "error", wantErr: `listen "unix:/x": permission denied; second line`},
		{say: "nothing", wantErr: ErrExited.Error()},
		{say: "hang", wantErr: context.DeadlineExceeded.Error()},
	} {
		t.Run(tt.say, func(t *testing.T) {
			p, err := NewPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), "READY_TEST_SAY="+tt.say)
			cmd.ExtraFiles = []*os.File{p.Child()}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			got, err := p.Wait(ctx)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Wait = %q, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Wait = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestParseRefusesOtherLines(t *testing.T) {
	for _, line := range []string{"okay\n", "ready\n", "\n"} {
		if _, err := parse(line); err == nil || !strings.Contains(err.Error(), "unexpected") {
			t.Errorf("parse(%q) = %v", line, err)
		}
	}
}
