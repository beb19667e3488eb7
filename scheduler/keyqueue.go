package scheduler

// keyQueue is the queue index's priority queue of keyEntry by (at, seq): the
// deadline and hard-stop queues of index.go. It is a 4-ary min-heap (half the
// levels of a binary heap, the four children of an entry side by side, so
// that a pop at 100k entries misses the cache about half as often) plus a
// stack of the entries a decision took and put back (putBack).
//
// A decision pops the earliest entries and puts them back when it ends; the
// caller then usually removes most of them from its queue, and the next
// decision pops them again only to find them gone. Put back into the heap,
// each would climb to the root and come down again (two passes over every
// level). Instead they go on the stack, whose last entry is its least: they
// were popped in order, and every entry left was at least as large, so the
// stack stays sorted without comparing them to anything. top and pop take the
// least of the stack's last entry and the heap's root.
//
// The keys are unique (a request's Seq is), so the order of pops is the order
// of the keys whatever the structure: the same as a binary heap's.
type keyQueue struct {
	h []keyEntry
	// back holds entries put back, in decreasing order (the least last); each
	// may be smaller or larger than the heap's root.
	back []keyEntry
}

func (q *keyQueue) len() int { return q.heapLen() + len(q.back) }

func (q *keyQueue) heapLen() int { return max(len(q.h)-heapPad, 0) }

// fromBack reports whether the least entry is the stack's (q not empty).
func (q *keyQueue) fromBack() bool {
	if len(q.back) == 0 {
		return false
	}
	return q.heapLen() == 0 || keyEntryLess(q.back[len(q.back)-1], q.h[heapPad])
}

// top returns the least entry; q must not be empty.
func (q *keyQueue) top() keyEntry {
	if q.fromBack() {
		return q.back[len(q.back)-1]
	}
	return q.h[heapPad]
}

// pop removes and returns the least entry; q must not be empty. The vacated
// slot is zeroed (so that the queue does not keep the request alive).
func (q *keyQueue) pop() keyEntry {
	if q.fromBack() {
		n := len(q.back) - 1
		e := q.back[n]
		q.back[n] = keyEntry{}
		q.back = q.back[:n]
		return e
	}
	return q.popHeap()
}

// heapPad is the number of unused slots before the heap's root: the four
// children of the entry at i are at 4i+1..4i+4, so with the root at slot
// heapPad = 3 they are at slots 4(i+1)..4(i+1)+3, the 64 bytes of one cache
// line of 16-byte entries (a large slice starts at a page).
const heapPad = 3

// push adds e to the heap.
func (q *keyQueue) push(e keyEntry) {
	if len(q.h) == 0 {
		q.h = append(q.h, make([]keyEntry, heapPad)...)
	}
	q.h = append(q.h, e)
	h := q.h[heapPad:]
	j := len(h) - 1
	for j > 0 {
		i := (j - 1) / 4
		if !keyEntryLess(e, h[i]) {
			break
		}
		h[j] = h[i]
		j = i
	}
	h[j] = e
}

func (q *keyQueue) popHeap() keyEntry {
	h := q.h[heapPad:]
	top := h[0]
	n := len(h) - 1
	last := h[n]
	h[n] = keyEntry{}
	q.h = q.h[:heapPad+n]
	if n > 0 {
		siftDown(h[:n], 0, last)
	}
	return top
}

// siftDown puts e at the place of h[i] (whose subtrees are heaps) and moves it
// down to where it belongs.
func siftDown(h []keyEntry, i int, e keyEntry) {
	n := len(h)
	for {
		c := 4*i + 1
		if c >= n {
			break
		}
		m := c
		for k := c + 1; k < min(c+4, n); k++ {
			if keyEntryLess(h[k], h[m]) {
				m = k
			}
		}
		if !keyEntryLess(h[m], e) {
			break
		}
		h[i] = h[m]
		i = m
	}
	h[i] = e
}

// add appends e to the heap's array without restoring its order; heapify
// must follow before any other use (a rebuild of the index: pushing the
// entries one by one would cost more).
func (q *keyQueue) add(e keyEntry) {
	if len(q.h) == 0 {
		q.h = append(q.h, make([]keyEntry, heapPad)...)
	}
	q.h = append(q.h, e)
}

// heapify restores the heap's order after add.
func (q *keyQueue) heapify() {
	if q.heapLen() < 2 {
		return
	}
	h := q.h[heapPad:]
	for i := (len(h) - 2) / 4; i >= 0; i-- {
		siftDown(h, i, h[i])
	}
}

// putBack returns entries taken by pop, in the order they were popped, with no
// push in between (a decision's entries, put back when it ends). They go on the
// stack when that keeps it sorted (always, for entries popped in order: each
// was the least at the time), and into the heap otherwise.
func (q *keyQueue) putBack(popped []keyEntry) {
	ok := len(popped) == 0 || len(q.back) == 0 || !keyEntryLess(q.back[len(q.back)-1], popped[len(popped)-1])
	for i := 1; ok && i < len(popped); i++ {
		ok = keyEntryLess(popped[i-1], popped[i])
	}
	if !ok {
		for _, e := range popped {
			q.push(e)
		}
		return
	}
	for i := len(popped) - 1; i >= 0; i-- {
		q.back = append(q.back, popped[i])
	}
}
