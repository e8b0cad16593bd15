// Package ready is the one way a process nbdlab starts in the background
// (nbdlab serve under the test harness and benchmarks, the process that
// holds a device for connect and attach) tells its parent that it is
// ready, or why it is not: one line on a pipe it inherited, "ok DETAIL"
// or "error MESSAGE", then the pipe is closed. No log text is read.
package ready

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// ErrExited is Wait's error when the child closed the pipe, usually by
// exiting, without a word.
var ErrExited = errors.New("exited before it was ready")

// Pipe is the parent's side.
type Pipe struct {
	r, w *os.File
}

// NewPipe makes the pipe; hand Child to the child in exec.Cmd.ExtraFiles.
func NewPipe() (*Pipe, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("ready: pipe: %w", err)
	}
	return &Pipe{r: r, w: w}, nil
}

// Child is the end the child writes to.
func (p *Pipe) Child() *os.File { return p.w }

// Close closes both ends; Wait does it too.
func (p *Pipe) Close() {
	p.r.Close()
	p.w.Close()
}

// Wait closes the parent's copy of the child's end, then reads the
// child's line: its DETAIL when it said ok, its MESSAGE as the error when
// it said error, ErrExited when it said nothing, or ctx's error when ctx
// ends first. Call it after the child has started.
func (p *Pipe) Wait(ctx context.Context) (string, error) {
	defer p.r.Close()
	p.w.Close()
	if dl, ok := ctx.Deadline(); ok {
		p.r.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { p.r.SetReadDeadline(time.Now()) })
	defer stop()
	line, err := bufio.NewReader(p.r).ReadString('\n')
	if err != nil && line == "" {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The read deadline is ctx's, and may pass a moment before
			// ctx notices.
			if cerr := ctx.Err(); cerr != nil {
				return "", cerr
			}
			return "", context.DeadlineExceeded
		}
		return "", ErrExited
	}
	return parse(line)
}

func parse(line string) (string, error) {
	line = strings.TrimSuffix(line, "\n")
	if detail, ok := strings.CutPrefix(line, "ok"); ok && (detail == "" || detail[0] == ' ') {
		return strings.TrimPrefix(detail, " "), nil
	}
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		return "", errors.New(msg)
	}
	return "", fmt.Errorf("ready: unexpected %q on the ready pipe", line)
}

// Signal is the child's side: the inherited descriptor.
type Signal struct{ f *os.File }

// Open returns the Signal on descriptor fd.
func Open(fd int) *Signal { return &Signal{os.NewFile(uintptr(fd), "ready")} }

// OK says the process is ready, with a detail on one line, and closes
// the pipe.
func (s *Signal) OK(detail string) error {
	return s.say("ok " + detail)
}

// Fail says why the process will not be ready, and closes the pipe.
func (s *Signal) Fail(err error) error {
	return s.say("error " + err.Error())
}

func (s *Signal) say(line string) error {
	line = strings.ReplaceAll(line, "\n", "; ")
	_, err := fmt.Fprintln(s.f, line)
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("ready: %w", err)
	}
	return nil
}
