package nbd

import (
	"bytes"
	"errors"
	"testing"
)

// receive writes what fill supplies; when fill fails, what it finished
// stays written and nothing else changes.
func TestMemReceive(t *testing.T) {
	const size = 8 * memChunkSize
	errCut := errors.New("connection cut")
	for _, tc := range []struct {
		name    string
		off, n  int
		failAt  int // fill fails once this many bytes came; -1: never
		written int // bytes that must hold the new data
	}{
		{"whole chunks", memChunkSize, 3 * memChunkSize, -1, 3 * memChunkSize},
		{"unaligned", 100, 3*memChunkSize + 7, -1, 3*memChunkSize + 7},
		{"inside one chunk", 5, 300, -1, 300},
		{"to the end", size - memChunkSize - 1, memChunkSize + 1, -1, memChunkSize + 1},
		{"cut in the second chunk", 0, 4 * memChunkSize, memChunkSize + 10, memChunkSize},
		{"cut in the first piece", 10, 2 * memChunkSize, 10, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMem(size)
			old := bytes.Repeat([]byte{0xee}, size)
			m.WriteAt(old[:size/2], 0) // half allocated, half a hole
			want := bytes.Clone(old)
			clear(want[size/2:])
			next := byte(0)
			fed := 0
			err := m.receive(int64(tc.off), int64(tc.n), func(p []byte) error {
				if tc.failAt >= 0 && fed+len(p) > tc.failAt {
					return errCut
				}
				for i := range p {
					next++
					p[i] = next
				}
				fed += len(p)
				return nil
			})
			if tc.failAt >= 0 != (err != nil) || err != nil && !errors.Is(err, errCut) {
				t.Fatalf("receive: %v", err)
			}
			for i := range tc.written {
				want[tc.off+i] = byte(i + 1)
			}
			got := make([]byte, size)
			m.ReadAt(got, 0)
			if i := firstDiff(got, want); i >= 0 {
				t.Fatalf("byte %d is %#x, want %#x", i, got[i], want[i])
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
