package nbd

import (
	"bytes"
	"errors"
	"slices"
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

// Mem against a model of its chunks, on an export of three and a half
// leaf tables: a write allocates the chunks it touches and no more, and
// block status, TRIM and WRITE_ZEROES give the same answers whether a
// range crosses leaves never made, leaves made and emptied again, or
// chunks in use.
func TestMemChunksAndLeaves(t *testing.T) {
	const size = 3*memLeafBytes + memLeafBytes/2
	type op struct {
		kind   string // write, trim, zero (NoHole)
		off, n int64
	}
	for _, tc := range []struct {
		name string
		ops  []op
	}{
		{"one byte", []op{{"write", 5, 1}}},
		{"a page across two chunks", []op{{"write", memChunkSize - 100, 4096}}},
		{"either side of a leaf", []op{{"write", memLeafBytes - 1, 2}, {"write", 3 * memLeafBytes, 4096}}},
		{"trim over empty leaves", []op{{"write", 2*memLeafBytes + 8192, 4096}, {"trim", 0, size}}},
		{"trim in part", []op{{"write", memLeafBytes, 3 * memChunkSize}, {"trim", memLeafBytes + 100, memChunkSize}}},
		{"leaf emptied, then written", []op{{"write", 0, 4096}, {"trim", 0, memLeafBytes}, {"write", 8192, 10}}},
		{"zero keeps chunks", []op{{"write", memLeafBytes, 2 * memChunkSize}, {"zero", 0, 2 * memLeafBytes}}},
		{"the last byte", []op{{"write", size - 1, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMem(size)
			data := map[int64]byte{} // bytes written and not zeroed since
			used := make([]bool, size/memChunkSize)
			for i, o := range tc.ops {
				first, last := o.off/memChunkSize, (o.off+o.n-1)/memChunkSize
				switch o.kind {
				case "write":
					if _, err := m.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, int(o.n)), o.off); err != nil {
						t.Fatal(err)
					}
					for k := range o.n {
						data[o.off+k] = byte(i + 1)
					}
					for c := first; c <= last; c++ {
						used[c] = true
					}
				case "trim", "zero":
					if err := m.Zero(o.off, o.n, ZeroFlags{NoHole: o.kind == "zero"}); err != nil {
						t.Fatal(err)
					}
					for k := range data {
						if k >= o.off && k < o.off+o.n {
							delete(data, k)
						}
					}
					for c := first; c <= last && o.kind == "trim"; c++ {
						if c*memChunkSize >= o.off && (c+1)*memChunkSize <= o.off+o.n {
							used[c] = false
						}
					}
				}
			}
			var want []Extent
			var inUse int64
			for _, u := range used {
				flags := StateHole | StateZero
				if u {
					flags, inUse = 0, inUse+memChunkSize
				}
				want = appendExtent(want, memChunkSize, flags)
			}
			if got := m.Allocated(); got != inUse {
				t.Errorf("Allocated() = %d, want %d", got, inUse)
			}
			got, err := m.Extents(0, size)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("Extents(0, %d) = %+v, want %+v", int64(size), got, want)
			}
			// A range that starts and ends inside chunks, across every leaf.
			got, _ = m.Extents(memChunkSize/2, size-memChunkSize)
			if n := sumExtents(got); n != size-memChunkSize {
				t.Errorf("Extents inside: cover %d bytes, want %d", n, int64(size-memChunkSize))
			}
			// Read back the chunks at both ends of every operation, and
			// their neighbours.
			for _, o := range tc.ops {
				for _, at := range []int64{o.off, o.off + o.n - 1} {
					lo := max(0, (at/memChunkSize-1)*memChunkSize)
					hi := min(size, (at/memChunkSize+2)*memChunkSize)
					back := make([]byte, hi-lo)
					m.ReadAt(back, lo)
					for k, b := range back {
						if want := data[lo+int64(k)]; b != want {
							t.Fatalf("byte %d is %#x, want %#x", lo+int64(k), b, want)
						}
					}
				}
			}
		})
	}
}
