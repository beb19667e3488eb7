package scheduler

import (
	"math"
	"slices"
	"time"
)

// keyQueue is the queue index's priority queue of keyEntry by (at, seq): the
// deadline and hard-stop queues of index.go. A decision takes a few dozen of
// the earliest entries of a queue of up to 100k and more, so it keeps three
// parts, split by a cut that only moves later:
//
//   - a 4-ary min-heap of the entries up to the cut (the four children of an
//     entry side by side in a cache line);
//   - far, the entries after the cut, in no order: a new request usually
//     goes there (an append), and when the heap runs out, the earliest eighth
//     of them or so move to it (a pass over far every few hundred decisions
//     at 100k queued), so that the heap stays small: at 100k queued an
//     eighth of the entries, and mostly in the cache;
//   - back, a stack of the entries a decision took and put back (putBack).
//     The caller then usually removes most of their requests from its queue,
//     and the next decision takes them again only to find them gone; put back
//     into the heap, each would climb to the root and come down again.
//     Instead they go on the stack, whose last entry is its least: they were
//     taken in order, and every entry left was at least as large.
//
// Every back and heap entry is at or before the cut and every far entry after
// it, so the least entry is the least of the stack's last and the heap's root,
// and far is looked at only when both are empty. The keys are unique (a
// request's Seq is), so the order of pops is the order of the keys whatever
// the structure: the same as a binary heap's.
//
// The hard-stop queues hold requests long after most have left the queue (a
// request's entry is popped when its hard stop comes, seconds after it was
// answered), so for them two more parts drop the entries of requests known to
// be gone instead of keeping them until then:
//
//   - young, the entries pushed by pushYoung (a hard-stop queue's arrivals)
//     during the last two decisions, in no order, with their least: a policy
//     that serves requests due soon serves most of them within a decision of
//     their arrival, so when an entry has been young for a whole decision
//     (sweepYoung) its request has mostly left, and is still in the cache to
//     be checked: it is dropped, or else pushed to the heap or far. When
//     young's least is less than the stack's and the heap's, young is pushed
//     at once;
//   - a round over far and the heap (sweep) that looks at a few entries at
//     each decision, for the requests that leave later.
type keyQueue struct {
	h, far []keyEntry
	// cut, when set, is the key (cutAt, cutSeq) up to which entries belong to
	// the heap.
	cut    bool
	cutAt  time.Duration
	cutSeq uint64
	// back holds entries put back, in decreasing order (the least last); each
	// may be smaller or larger than the heap's root.
	back []keyEntry
	// young holds entries pushed by pushYoung, the first youngOld of them
	// before the last sweepYoung; youngMin is the least of them.
	young    []keyEntry
	youngOld int
	youngMin keyEntry
	// swept is where the next sweep starts: a place in far, or past far's
	// end one in the heap (the round goes over far, then the heap).
	swept int
}

// nearMin and nearShare size what a refill moves from far to the heap: a
// share of far, and at least nearMin entries. A refill is a pass over far, so
// it costs nearShare entries looked at per entry moved; with a thirty-second
// that was about a tenth of an edf decision at 100k queued, and an eighth (a
// heap of 12,500 entries at 100k, 200 KB) is cheaper overall.
const (
	nearMin   = 256
	nearShare = 8
)

// reset empties q, keeping its buffers (the zero keyQueue is empty too).
func (q *keyQueue) reset() {
	clear(q.h)
	clear(q.far)
	clear(q.back)
	clear(q.young)
	q.h, q.far, q.back, q.young = q.h[:0], q.far[:0], q.back[:0], q.young[:0]
	q.cut, q.swept, q.youngOld = false, 0, 0
}

func (q *keyQueue) len() int { return q.heapLen() + len(q.far) + len(q.back) + len(q.young) }

func (q *keyQueue) heapLen() int { return max(len(q.h)-heapPad, 0) }

// fromBack reports whether the least entry is the stack's, after moving
// entries from far to the heap if both were empty (q not empty).
func (q *keyQueue) fromBack() bool {
	if len(q.young) > 0 {
		q.youngFirst()
	}
	if len(q.back) == 0 {
		if q.heapLen() == 0 {
			q.refill()
		}
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

// push adds e.
func (q *keyQueue) push(e keyEntry) {
	if q.near(e) {
		q.pushHeap(e)
		return
	}
	q.far = append(q.far, e)
}

// near reports whether e belongs to the heap: at or before the cut.
func (q *keyQueue) near(e keyEntry) bool {
	return q.cut && (e.at < q.cutAt || e.at == q.cutAt && e.seq <= q.cutSeq)
}

// refill moves the earliest entries of far to the heap (empty) and moves the
// cut past them: those before the key that a sample of far puts at the
// nearShare-th part (all of far when it is small), and at least those with
// the earliest key.
func (q *keyQueue) refill() {
	n := len(q.far)
	if n == 0 {
		return
	}
	want := max(nearMin, n/nearShare)
	if n <= want {
		most := q.far[0]
		for _, e := range q.far {
			if keyEntryLess(most, e) {
				most = e
			}
			q.add(e)
		}
		clear(q.far)
		q.far = q.far[:0]
		q.raise(most.at, most.seq)
		q.heapify()
		return
	}
	var sample [128]time.Duration
	for i := range sample {
		sample[i] = q.far[i*n/len(sample)].at
	}
	slices.Sort(sample[:])
	if split := sample[want*len(sample)/n]; split > math.MinInt64 {
		q.raise(split-1, math.MaxUint64)
	}
	for {
		k := 0
		least := time.Duration(math.MaxInt64)
		for _, e := range q.far {
			if q.near(e) {
				q.add(e)
				continue
			}
			least = min(least, e.at)
			q.far[k] = e
			k++
		}
		clear(q.far[k:])
		q.far = q.far[:k]
		if q.heapLen() > 0 {
			break
		}
		// Nothing before the sample's key: take those with the earliest.
		q.raise(least, math.MaxUint64)
	}
	q.heapify()
}

// raise moves the cut to (at, seq) if that is later. The cut never goes back,
// so that every heap and back entry is at or before it, and every far entry
// after it.
func (q *keyQueue) raise(at time.Duration, seq uint64) {
	if !q.cut || at > q.cutAt || at == q.cutAt && seq > q.cutSeq {
		q.cut, q.cutAt, q.cutSeq = true, at, seq
	}
}

// heapPad is the number of unused slots before the heap's root: the four
// children of the entry at i are at 4i+1..4i+4, so with the root at slot
// heapPad = 3 they are at slots 4(i+1)..4(i+1)+3, 96 bytes of 24-byte entries
// starting at a multiple of 32 (a large slice starts at a page): two cache
// lines, half of them one.
const heapPad = 3

func (q *keyQueue) pushHeap(e keyEntry) {
	if len(q.h) == 0 {
		q.h = append(q.h, make([]keyEntry, heapPad)...)
	}
	q.h = append(q.h, e)
	h := q.h[heapPad:]
	siftUp(h, len(h)-1, e)
}

// siftUp puts e at the place of h[j] (h a heap but for that place) and moves
// it up to where it belongs.
func siftUp(h []keyEntry, j int, e keyEntry) {
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
	top := q.h[heapPad]
	q.removeHeap(0)
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

// add appends e to the heap's array without restoring its order (refill);
// heapify must follow before any other use.
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
// was the least at the time), and are pushed otherwise.
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

// pushYoung adds e to young (see keyQueue).
func (q *keyQueue) pushYoung(e keyEntry) {
	if len(q.young) == 0 || keyEntryLess(e, q.youngMin) {
		q.youngMin = e
	}
	q.young = append(q.young, e)
}

// youngFirst pushes young to the heap or far when its least entry is the
// least of all (young not empty).
func (q *keyQueue) youngFirst() {
	if len(q.back) > 0 && keyEntryLess(q.back[len(q.back)-1], q.youngMin) ||
		q.heapLen() > 0 && keyEntryLess(q.h[heapPad], q.youngMin) {
		return
	}
	for _, e := range q.young {
		q.push(e)
	}
	clear(q.young)
	q.young, q.youngOld = q.young[:0], 0
}

// sweepYoung ends a decision for young: the entries pushed before the last
// sweepYoung are dropped if gone reports their request gone and pushed to the
// heap or far otherwise; the others wait for the next.
func (q *keyQueue) sweepYoung(gone func(keyEntry) bool) {
	for _, e := range q.young[:q.youngOld] {
		if !gone(e) {
			q.push(e)
		}
	}
	n := copy(q.young, q.young[q.youngOld:])
	clear(q.young[n:])
	q.young, q.youngOld = q.young[:n], n
	for i, e := range q.young {
		if i == 0 || keyEntryLess(e, q.youngMin) {
			q.youngMin = e
		}
	}
}

// sweep looks at k entries of far and the heap (all of them if they hold
// fewer), going on from where the last sweep stopped and round from the
// heap's end to far's start, and drops those gone reports gone (the index
// answers from the entry's Seq, without reading the request: seqSet):
// in far a dropped entry's place takes far's last (far has no order), in the
// heap the heap's last, moved up or down to where it belongs. It finds the
// entries of the requests that stayed in the queue beyond their first
// decision (see young), which would otherwise stay until their hard stop
// comes.
func (q *keyQueue) sweep(k int, gone func(keyEntry) bool) {
	for k = min(k, len(q.far)+q.heapLen()); k > 0; k-- {
		if q.swept >= len(q.far)+q.heapLen() {
			q.swept = 0
		}
		if i := q.swept; i < len(q.far) {
			if !gone(q.far[i]) {
				q.swept++
				continue
			}
			last := len(q.far) - 1
			q.far[i] = q.far[last]
			q.far[last] = keyEntry{}
			q.far = q.far[:last]
		} else if i -= len(q.far); gone(q.h[heapPad+i]) {
			q.removeHeap(i)
		} else {
			q.swept++
		}
	}
}

// removeHeap removes the heap's i-th entry: the heap's last takes its place
// and moves up or down to where it belongs (down only, for the root: popHeap).
func (q *keyQueue) removeHeap(i int) {
	h := q.h[heapPad:]
	n := len(h) - 1
	last := h[n]
	h[n] = keyEntry{}
	q.h = q.h[:heapPad+n]
	if i == n {
		return
	}
	h = h[:n]
	if i > 0 && keyEntryLess(last, h[(i-1)/4]) {
		siftUp(h, i, last)
	} else {
		siftDown(h, i, last)
	}
}
