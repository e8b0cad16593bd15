package qcow2

import (
	"container/list"
	"sync"
)

// tableCache holds the most recently used L2 tables, by their offset in
// the file, up to a number of tables.
type tableCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // front: most recent; values are *cached
	byOff map[uint64]*list.Element
}

type cached struct {
	off   uint64
	table []uint64
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
	c.byOff[off] = c.order.PushFront(&cached{off, t})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byOff, last.Value.(*cached).off)
	}
}
