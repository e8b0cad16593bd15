package nbd

import (
	"math/rand/v2"
	"testing"
)

func BenchmarkMemRandWrite4k(b *testing.B) {
	m := NewMem(1 << 30)
	buf := make([]byte, 4096)
	for off := int64(0); off < 1<<30; off += memChunkSize {
		m.WriteAt(buf, off)
	}
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.WriteAt(buf, rand.Int64N(1<<18)*4096)
	}
}

func TestBufPoolRecyclesWithoutAllocating(t *testing.T) {
	var p bufPool
	p.put(p.get(4096)) // warm the pools
	allocs := testing.AllocsPerRun(1000, func() { p.put(p.get(4096)) })
	if allocs > 0 {
		t.Fatalf("get+put allocates %.1f times; want 0", allocs)
	}
	if b := p.get(5000); len(b) != 5000 || cap(b) != 8192 {
		t.Fatalf("get(5000): len %d cap %d, want 5000 and the 8 KiB class", len(b), cap(b))
	}
}

// BenchmarkMemFreshWrite4k writes 4 KiB at random to memory never
// written: each write allocates its chunk.
func BenchmarkMemFreshWrite4k(b *testing.B) {
	const size, batch = 1 << 30, 1 << 14
	buf := make([]byte, 4096)
	b.SetBytes(4096)
	b.ReportAllocs()
	var m *Mem
	for i := 0; i < b.N; i++ {
		if i%batch == 0 {
			b.StopTimer()
			m = NewMem(size)
			b.StartTimer()
		}
		m.WriteAt(buf, rand.Int64N(size/4096)*4096)
	}
}
