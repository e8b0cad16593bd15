package nbd

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// The stall watch steals the reader role from a request that is just
// ending: the old reader sees its end fail and marks the request done at
// once, before takeOver has gone on. The request must already count in
// flight then, or the counter goes below zero (a panic, or a Shutdown
// that stops waiting too early).
func TestTakeOverCountsTheRequestFirst(t *testing.T) {
	srv := fuzzServer(t)
	s := newSession(srv, stream{bytes.NewReader(nil), io.Discard}, nil)
	s.export = srv.Exports[0]
	tr := newTransmission(s, srv.logger())
	ticket := tr.inline.begin() // a request runs inline
	tr.afterSteal = func() {
		// What runInline does when its end loses to the steal.
		if !tr.inline.end(ticket) {
			tr.inflight.Done()
		}
	}
	if !tr.takeOver(ticket) {
		t.Fatal("takeOver did not steal from a running request")
	}
	<-tr.readerDone // the new reader meets the end of the stream
	tr.inflight.Wait()
	if tr.takeOver(ticket + 1) {
		t.Fatal("takeOver stole from a request that is not running")
	}
}

// trickler hands out its data a few bytes at a time and records how long
// each read was allowed to poll.
type trickler struct {
	data  []byte
	piece int
	spins []time.Duration
}

func (r *trickler) Read(p []byte) (int, error) { return r.ReadSpin(p, 0) }

func (r *trickler) ReadSpin(p []byte, d time.Duration) (int, error) {
	r.spins = append(r.spins, d)
	n := copy(p, r.data[:min(r.piece, len(r.data))])
	r.data = r.data[n:]
	return n, nil
}

// A payload that comes in pieces too small to be worth polling for is
// polled for twice, then waited for.
func TestPayloadTrickleStopsPolling(t *testing.T) {
	if !spinCPUs {
		t.Skip("one CPU: the reader never polls")
	}
	for _, tt := range []struct {
		name      string
		piece     int
		wantSpins int
	}{
		{"trickle", 1, 2},
		{"large pieces", 64 << 10, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const size = 256 << 10
			src := &trickler{data: bytes.Repeat([]byte{7}, size), piece: tt.piece}
			srv := fuzzServer(t)
			s := newSession(srv, struct {
				*trickler
				io.Writer
			}{src, io.Discard}, nil)
			s.export = srv.Exports[0]
			tr := newTransmission(s, srv.logger())
			p := make([]byte, size)
			if tt.piece == 1 {
				p = p[:4096] // enough to see the polling stop
			}
			if err := tr.payload(size).fill(p); err != nil {
				t.Fatal(err)
			}
			spun := 0
			for _, d := range src.spins {
				if d > 0 {
					spun++
				}
			}
			if spun != tt.wantSpins {
				t.Fatalf("%d of %d reads polled, want %d", spun, len(src.spins), tt.wantSpins)
			}
		})
	}
}

// queued is a connection whose socket holds n bytes not read yet.
type queued struct {
	io.Reader
	n int
}

func (q queued) Queued() (int, error) { return q.n, nil }

// Slow inline requests send the next ones to workers only when requests
// wait behind them: at queue depth 1 a worker overlaps nothing and only
// adds a hand-off, which on a slow machine (every request slow by the
// clock) cost a third of the rate.
func TestSlowInlineBacksOffOnlyWithRequestsWaiting(t *testing.T) {
	for _, tt := range []struct {
		name     string
		queued   int
		took     time.Duration
		wantBack bool
	}{
		{"slow, nothing waiting", 0, time.Millisecond, false},
		{"slow, requests waiting", 28, time.Millisecond, true},
		{"fast, requests waiting", 28, time.Microsecond, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := fuzzServer(t)
			s := newSession(srv, stream{bytes.NewReader(nil), io.Discard}, nil)
			s.export = srv.Exports[0]
			tr := newTransmission(s, srv.logger())
			tr.in.r = queued{bytes.NewReader(nil), tt.queued}
			for range inlineSlowRun {
				tr.noteInline(tt.took, 4096)
			}
			if got := tr.noInline > 0; got != tt.wantBack {
				t.Errorf("after %d requests of %s with %d bytes queued: backing off %v, want %v",
					inlineSlowRun, tt.took, tt.queued, got, tt.wantBack)
			}
		})
	}
}
