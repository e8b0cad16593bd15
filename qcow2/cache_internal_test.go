package qcow2

import "testing"

// TestCacheKeepsDirtyAndNewest: a dirty table stays past the bound until
// written back, and a table just put stays even when every other one is
// dirty (the writer marks it dirty next).
func TestCacheKeepsDirtyAndNewest(t *testing.T) {
	c := newTableCache(1)
	c.put(512, []uint64{1})
	c.markDirty(512)
	c.put(1024, []uint64{2})
	if _, ok := c.get(1024); !ok {
		t.Fatal("the table just put was evicted")
	}
	c.markDirty(1024)
	c.put(2048, []uint64{3})
	for _, off := range []uint64{512, 1024, 2048} {
		if _, ok := c.get(off); !ok {
			t.Fatalf("table at %d evicted while dirty or newest", off)
		}
	}
	var wrote []uint64
	c.writeBack(func(off uint64, _ []uint64) error { wrote = append(wrote, off); return nil })
	if len(wrote) != 2 || c.dirtyCount() != 0 {
		t.Fatalf("wrote back %v, %d still dirty", wrote, c.dirtyCount())
	}
	if c.order.Len() != 1 {
		t.Fatalf("%d tables cached after write-back, want the bound, 1", c.order.Len())
	}
}
