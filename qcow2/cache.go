package qcow2

import (
	"container/list"
	"sync"
)

// tableCache holds the most recently used L2 tables, by their offset in
// the file, up to a number of tables. A table changed in memory (dirty)
// stays until it is written back, whatever the bound: the writer writes
// them back when there are too many.
type tableCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // front: most recent; values are *cached
	byOff map[uint64]*list.Element
	dirty int
}

type cached struct {
	off   uint64
	table []uint64
	dirty bool
}

func newTableCache(max int) *tableCache {
	return &tableCache{max: max, order: list.New(), byOff: map[uint64]*list.Element{}}
}

func (c *tableCache) get(off uint64) ([]uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byOff[off]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*cached).table, true
}

func (c *tableCache) put(off uint64, t []uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byOff[off]; ok {
		e.Value.(*cached).table = t
		c.order.MoveToFront(e)
		return
	}
	c.byOff[off] = c.order.PushFront(&cached{off: off, table: t})
	c.evict()
}

// evict drops the least recently used clean tables beyond the bound,
// never the most recent, which its caller is about to use.
func (c *tableCache) evict() {
	for e := c.order.Back(); e != nil && e != c.order.Front() && c.order.Len() > c.max; {
		prev := e.Prev()
		if v := e.Value.(*cached); !v.dirty {
			c.order.Remove(e)
			delete(c.byOff, v.off)
		}
		e = prev
	}
}

// markDirty pins the table at off, which must be in the cache, until
// writeBack.
func (c *tableCache) markDirty(off uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v := c.byOff[off].Value.(*cached); !v.dirty {
		v.dirty = true
		c.dirty++
	}
}

// dirtyCount is the number of tables waiting to be written back.
func (c *tableCache) dirtyCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dirty
}

// writeBack writes every dirty table with write and marks it clean.
func (c *tableCache) writeBack(write func(off uint64, t []uint64) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := c.order.Front(); e != nil; e = e.Next() {
		v := e.Value.(*cached)
		if !v.dirty {
			continue
		}
		if err := write(v.off, v.table); err != nil {
			return err
		}
		v.dirty = false
		c.dirty--
	}
	c.evict()
	return nil
}
