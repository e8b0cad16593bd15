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
