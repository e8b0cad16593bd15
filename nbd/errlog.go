package nbd

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Backend errors leave a trace: every error a backend returns (but
// ENOTSUP, a fast zero's expected refusal) is counted by errno for the
// session's end line, and logged with its export, command, offset and
// length: the first errLogBurst of a session each, then at most one every
// errLogEvery, saying how many went unlogged since. A disk that fills
// under a writing client thus logs a few lines a second, not one per
// request, and the disconnect line says how many failed.
const (
	errLogBurst = 10
	errLogEvery = time.Second
)

// errorLog counts and logs a session's backend errors. Errors are rare:
// a mutex, taken only on an error, is enough.
type errorLog struct {
	now func() time.Time // time.Now unless a test drives it

	mu         sync.Mutex
	counts     map[Errno]int64
	logged     int
	last       time.Time // when the last line was logged past the burst
	suppressed int64     // errors not logged since then
}

// record counts an error of request r and logs it if the rate allows.
func (l *errorLog) record(log *slog.Logger, export string, r request, errno Errno, err error) {
	if errno == ENOTSUP {
		return
	}
	l.mu.Lock()
	if l.counts == nil {
		l.counts = map[Errno]int64{}
	}
	l.counts[errno]++
	now := l.now
	if now == nil {
		now = time.Now
	}
	var skipped int64
	switch t := now(); {
	case l.logged < errLogBurst:
		l.logged++
		if l.logged == errLogBurst {
			l.last = t
		}
	case t.Sub(l.last) >= errLogEvery:
		l.last, skipped, l.suppressed = t, l.suppressed, 0
	default:
		l.suppressed++
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	attrs := []any{"export", export, "cmd", r.cmd.String(), "offset", r.off, "length", r.length, "errno", errno.String(), "err", err}
	if skipped > 0 {
		attrs = append(attrs, "not_logged_since", skipped)
	}
	log.Error("backend error", attrs...)
}

// summary is "ENOSPC=12 EIO=1", most frequent first, or "" if the session
// had no error.
func (l *errorLog) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	errnos := make([]Errno, 0, len(l.counts))
	for e := range l.counts {
		errnos = append(errnos, e)
	}
	slices.SortFunc(errnos, func(a, b Errno) int {
		if l.counts[a] != l.counts[b] {
			return int(l.counts[b] - l.counts[a])
		}
		return int(a) - int(b)
	})
	parts := make([]string, len(errnos))
	for i, e := range errnos {
		parts[i] = fmt.Sprintf("%s=%d", e.String(), l.counts[e])
	}
	return strings.Join(parts, " ")
}
