package nbd

import (
	"net"
	"testing"
	"time"
)

// deadlineConn records the read deadlines set on it.
type deadlineConn struct {
	net.Conn
	last time.Time
}

func (c *deadlineConn) SetReadDeadline(d time.Time) error { c.last = d; return nil }

// Once a drain has stopped reading with a past deadline (TLS, which has
// no CloseRead), the idle timeout's own deadlines leave it be: one set
// after it had the reader wait out the whole idle timeout, and Shutdown
// its ctx (8 of 10 shutdowns of four TLS clients reading).
func TestDrainOutlastsIdleDeadlines(t *testing.T) {
	c := &deadlineConn{}
	tr := &transmission{conn: c, idle: time.Minute}
	tr.stopReading()
	for _, step := range []struct {
		name string
		fn   func()
	}{{"armIdle", tr.armIdle}, {"begin", tr.begin}, {"armIdle in flight", tr.armIdle}} {
		step.fn()
		if c.last.IsZero() || c.last.After(time.Now()) {
			t.Fatalf("after %s the read deadline is %v: the drain was undone", step.name, c.last)
		}
	}
}
