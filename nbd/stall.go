package nbd

import (
	"sync"
	"sync/atomic"
	"time"
)

// stallWatch catches inline requests that stall. Every stallTick it looks
// at each connection's inline ticket; a request seen running at two
// ticks in a row has run for at least one tick, and the watch gives that
// connection's reader role to a new goroutine (transmission.takeOver).
//
// The watch ticks only while requests run inline: after stallIdleTicks
// ticks without one it sleeps until the next inline request wakes it, so
// an idle server does not wake up a thousand times a second.
type stallWatch struct {
	mu      sync.Mutex
	seen    map[*transmission]uint64 // inline ticket at the last tick
	running bool                     // the watch goroutine exists

	parked atomic.Bool
	wake   chan struct{}
}

const (
	stallTick      = 5 * time.Millisecond
	stallIdleTicks = 20
)

func (w *stallWatch) add(t *transmission) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen == nil {
		w.seen = map[*transmission]uint64{}
		w.wake = make(chan struct{}, 1)
	}
	w.seen[t], _ = t.inline.look()
	if !w.running {
		w.running = true
		go w.watch()
	}
}

func (w *stallWatch) remove(t *transmission) {
	w.mu.Lock()
	delete(w.seen, t)
	empty := len(w.seen) == 0
	w.mu.Unlock()
	if empty {
		w.touch() // a parked watch wakes up to end
	}
}

// touch wakes a parked watch; an inline request calls it after it marks
// itself running.
func (w *stallWatch) touch() {
	if w.parked.Load() && w.parked.CompareAndSwap(true, false) {
		w.wake <- struct{}{}
	}
}

// tick takes over stalled readers and reports whether any connection had a
// request running inline, or false with no connections left to watch.
func (w *stallWatch) tick() (busy, alive bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.seen) == 0 {
		w.running = false
		return false, false
	}
	for t, last := range w.seen {
		now, running := t.inline.look()
		if running {
			busy = true
			if now == last && t.takeOver(now) {
				now++
			}
		}
		w.seen[t] = now
	}
	return busy, true
}

func (w *stallWatch) watch() {
	idle := 0
	for {
		time.Sleep(stallTick)
		busy, alive := w.tick()
		switch {
		case !alive:
			return
		case busy:
			idle = 0
			continue
		}
		if idle++; idle < stallIdleTicks {
			continue
		}
		idle = 0
		w.parked.Store(true)
		// A request that started before parked was visible did not
		// see it; look once more before sleeping.
		if busy, alive = w.tick(); busy || !alive {
			if !w.parked.CompareAndSwap(true, false) {
				<-w.wake
			}
			if !alive {
				return
			}
			continue
		}
		<-w.wake
	}
}
