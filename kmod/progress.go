package kmod

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"time"
)

// makeProgress passes make's output on to the build log and, at most
// every interval, tells out how far it got: how many kbuild steps ("  CC
// drivers/block/nbd.o", "  LD ...") ran and the latest, so that a long
// modules_prepare is seen to move. Nothing is printed for a make that
// ends within the first interval.
type makeProgress struct {
	log      io.Writer
	out      io.Writer
	what     string
	interval time.Duration
	now      func() time.Time
	last     time.Time
	steps    int
	latest   string
	partial  []byte
}

func newMakeProgress(log, out io.Writer, what string) *makeProgress {
	return &makeProgress{log: log, out: out, what: what, interval: 10 * time.Second, now: time.Now, last: time.Now()}
}

func (p *makeProgress) Write(b []byte) (int, error) {
	n, err := p.log.Write(b)
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		line := string(p.partial[:i])
		p.partial = p.partial[i+1:]
		if f := strings.Fields(line); len(f) == 2 && strings.HasPrefix(line, "  ") && strings.ToUpper(f[0]) == f[0] {
			p.steps++
			p.latest = f[0] + " " + f[1]
		}
	}
	if now := p.now(); now.Sub(p.last) >= p.interval && p.steps > 0 {
		p.last = now
		fmt.Fprintf(p.out, "      %s: %d steps so far (%s)\n", p.what, p.steps, p.latest)
	}
	return n, err
}
