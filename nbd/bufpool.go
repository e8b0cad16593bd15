package nbd

import (
	"math/bits"
	"sync"
)

const (
	minBufShift = 12 // 4 KiB
	maxBufShift = 25 // MaxPayload
)

// bufPool recycles request and reply buffers in power-of-two size classes,
// so that steady I/O allocates nothing and memory stays bounded by the
// requests in flight.
type bufPool struct {
	classes [maxBufShift - minBufShift + 1]sync.Pool
	// headers recycles the *[]byte the classes hold, so that putting a
	// buffer back allocates nothing either.
	headers sync.Pool
}

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// get returns a buffer of length n.
func (p *bufPool) get(n int) []byte {
	if n == 0 {
		return nil
	}
	c := bufClass(n)
	if c >= len(p.classes) {
		return make([]byte, n)
	}
	if h, ok := p.classes[c].Get().(*[]byte); ok {
		b := (*h)[:n]
		*h = nil
		p.headers.Put(h)
		return b
	}
	return make([]byte, n, 1<<(c+minBufShift))
}

// put returns a buffer from get to the pool.
func (p *bufPool) put(b []byte) {
	if cap(b) == 0 {
		return
	}
	c := bufClass(cap(b))
	if c >= len(p.classes) || cap(b) != 1<<(c+minBufShift) {
		return
	}
	h, ok := p.headers.Get().(*[]byte)
	if !ok {
		h = new([]byte)
	}
	*h = b[:0]
	p.classes[c].Put(h)
}
