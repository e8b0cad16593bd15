package nbd

import (
	"sync"
	"testing"
)

// parkLock admits one holder at a time: goroutines that each add to a
// count under it lose no update (and go test -race sees no race).
func TestParkLockExcludes(t *testing.T) {
	l := newParkLock()
	var wg sync.WaitGroup
	n := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				l.Lock()
				v := n
				n = v + 1
				l.Unlock()
			}
		}()
	}
	wg.Wait()
	if n != 8000 {
		t.Fatalf("count under the lock = %d, want 8000", n)
	}
}
