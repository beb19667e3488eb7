package scheduler

import (
	"cmp"
	"slices"
	"time"
)

// This file lets the cascade decide from the earliest-deadline requests of a
// long queue (from boundedMin queued), as bounded.go does for the searching
// policies, and still make the decision the whole queue would (issue 10: a
// decision over the whole queue cost 4 ms per scheduled request at 100k
// queued, not overloaded).
//
// A decision over the whole queue (prepass, sort by deadline, shedding walk,
// head and batch) reads a far-deadline request only to find that it gets no
// verdict, is not shed, and is neither the head nor in its batch. bounded
// decides over the L earliest-deadline requests V (from a deadline index kept
// between decisions) and keeps the result when these bounds prove that the
// requests after V could not have changed it:
//
//   - prepass verdicts: every variant of both passes of every application can
//     be made resident, and the earliest deadline after V, dl_next, is more
//     than every such swap plus batch-1 latency away: a request after V, first
//     or second pass, is neither past its hard stop nor too late for its pass;
//   - shedding: a summary of the queue's pass costs by deadline bucket shows
//     that the whole walk drops nothing after V: for every bucket from
//     dl_next's on, the cost of every request due by its end fits before its
//     start (and before dl_next). The walk is in deadline order, so its part
//     over V is the walk over V;
//   - head and batch: the head's batch took its cap of requests of the head's
//     application and pass from V, or V holds every queued request of that
//     kind (the summary counts them).
//
// When a bound fails, L doubles; past a quarter of the queue the decision is
// made over the whole queue, and so is the decision after one that answered
// or batched more than a quarter of its queue (overload: the bounds would not
// hold, and following the queue would cost what it sheds). The thresholds
// (from the arrival rates) read only the queue's new tail.
//
// The index must also follow the cascade's second passes, which come back
// into the queue with their old Seq, in the middle (the contract of
// Snapshot.Queue says nothing of them, and the other policies' index does not
// look for them). It keeps the decisions' first-pass batches (pending) and
// counts: between two decisions the queue loses what the last decision
// answered or batched and that is no longer there (each is looked up), gains
// its new tail, and the rest of the difference in length are requests back
// from a first pass, found among the pending batches (those with First set
// that are queued; a batch's unsure requests all come back at once, so a
// batch with one back is done, as is one that did not run). If the count does
// not add up (the caller removed other requests, or a request came back from
// a batch no longer pending) the index is rebuilt from the queue. A caller
// that both removes requests the decision did not answer and puts first
// passes back between the same two decisions can hide one from the other:
// the gateway and the simulator (Executor) remove only what the decision
// answered or batched. TestCascadeBoundedEqualsFull checks the equivalence
// with the policy as it was (whole queue, wholeQueue) over long runs with
// second passes, spells of overload and a burst.

// cascadeIndex is the cascade's view of a long queue between decisions.
type cascadeIndex struct {
	// valid: the index followed the queue up to the last decision.
	valid bool
	ix    queueIndex
	sum   cascadeSum
	// prevLen is the last decision's queue length; last its answered and
	// batched requests, each with whether it was a first pass then.
	prevLen int
	last    []cascadeDecided
	// pending are first-pass batches whose unsure requests may still come
	// back, oldest first; lastPending: the last decision's is the last.
	pending     [][]*Request
	lastPending bool
	// heavy: the last decision answered or batched more than a quarter of
	// its queue (overload: the next one is made over the whole queue, without
	// following the queue for a bounded decision that would not be proved).
	heavy bool
	// rebuilds counts the rebuilds from the queue (tests).
	rebuilds int
}

type cascadeDecided struct {
	r     *Request
	first bool
}

// maxPending bounds the first-pass batches kept (a request back from an
// older one makes the index rebuild itself).
const maxPending = 64

// sync brings the index up to s, rebuilding it from the queue when it cannot
// follow.
func (c *cascadeIndex) sync(p *cascade, s *Snapshot) {
	x := &c.ix
	if !c.valid || x.per == nil || !x.sameApps(s.Apps) || !c.sum.same(p, s.Apps) {
		c.rebuild(p, s)
		return
	}
	q := s.Queue
	x.q, x.broken = q, false
	x.find.reset(q)
	start := len(q)
	for start > 0 && q[start-1].Seq > x.maxSeq {
		start--
	}
	left, kept := 0, false
	for _, d := range c.last {
		i, found := x.find.find(d.r.Seq)
		switch {
		case found && q[i] == d.r:
			// Still queued (the decision was not applied), or already back
			// from its first pass.
			kept = true
			if d.first && d.r.First != nil {
				c.sum.remove(p, d.r, true)
				c.sum.add(p, d.r, false)
			}
		case found:
			c.rebuild(p, s) // replaced by another request with its Seq
			return
		default:
			left++
			c.sum.remove(p, d.r, d.first)
		}
	}
	c.last = c.last[:0]
	if kept && c.lastPending {
		// The last decision's first pass did not run, or ran and its unsure
		// requests are back already: nothing more of it will come back.
		c.pending[len(c.pending)-1] = nil
		c.pending = c.pending[:len(c.pending)-1]
	}
	c.lastPending = false
	if back := start - (c.prevLen - left); back < 0 || !c.comeBack(p, q, back) {
		c.rebuild(p, s)
		return
	}
	for _, r := range q[start:] {
		x.add(r, true)
		c.sum.add(p, r, r.First == nil)
	}
	if !c.sum.valid {
		c.sum.rebuild(p, s)
	}
}

// comeBack finds the n requests back from a first pass since the last
// decision among the pending batches (those with First set that are queued:
// a batch's unsure requests all come back at once, so a batch with one back
// is done) and indexes them; false when they are not exactly n.
func (c *cascadeIndex) comeBack(p *cascade, q []*Request, n int) bool {
	if n == 0 {
		return true
	}
	x := &c.ix
	found := 0
	seen := map[*Request]bool{} // a request batched again after a first pass that did not run
	c.pending = slices.DeleteFunc(c.pending, func(b []*Request) bool {
		if found >= n {
			return false
		}
		hit := false
		for _, r := range b {
			if r.First == nil || seen[r] {
				hit = hit || seen[r]
				continue
			}
			seen[r] = true
			if i, ok := x.find.find(r.Seq); !ok || q[i] != r {
				continue
			}
			hit = true
			found++
			if !x.holds(r) { // else its entry is still in the index
				x.add(r, true)
			}
			c.sum.add(p, r, false)
		}
		return hit
	})
	return found == n
}

// rebuild indexes the whole queue. A pending batch whose unsure requests came
// back is done.
func (c *cascadeIndex) rebuild(p *cascade, s *Snapshot) {
	c.rebuilds++
	x := &c.ix
	x.reset(s.Apps)
	x.ref = s.Now
	x.q, x.broken = s.Queue, false
	x.find.reset(s.Queue)
	for _, r := range s.Queue {
		x.add(r, false)
	}
	c.sum.rebuild(p, s)
	c.last = c.last[:0]
	c.pending = slices.DeleteFunc(c.pending, func(b []*Request) bool {
		return slices.ContainsFunc(b, func(r *Request) bool { return r.First != nil })
	})
	c.valid = true
}

// decided records decision d on s's queue: what it answered and batched, to
// look up at the next decision, and its first-pass batch. (The pending
// batches are kept even while the index is not: their requests may come back
// once the queue is long.)
func (c *cascadeIndex) decided(s *Snapshot, d Decision, indexed bool) {
	n := len(d.Verdicts)
	if d.Batch != nil {
		n += len(d.Batch.Requests)
	}
	c.heavy = 4*n > len(s.Queue)
	c.lastPending = false
	if b := d.Batch; b != nil && b.EscalateBelow > 0 {
		if len(c.pending) == maxPending {
			c.pending[0] = nil
			c.pending = c.pending[1:]
		}
		c.pending = append(c.pending, slices.Clone(b.Requests))
		c.lastPending = true
	}
	if !indexed {
		c.valid = false
		return
	}
	for _, v := range d.Verdicts {
		c.last = append(c.last, cascadeDecided{v.Request, v.Request.First == nil})
	}
	if d.Batch != nil {
		for _, r := range d.Batch.Requests {
			c.last = append(c.last, cascadeDecided{r, r.First == nil})
		}
	}
	c.prevLen = len(s.Queue)
}

// bounded makes the decision from the earliest-deadline requests when it can
// prove it the same as the whole queue's (see the top of this file); ok is
// false when the caller must decide over the whole queue.
func (p *cascade) bounded(s *Snapshot, th map[*App]float64) (Decision, bool) {
	c := &p.idx
	x := &c.ix
	defer x.restore()
	now := s.Now
	var tmax time.Duration
	for _, a := range s.Apps {
		cheap, better, _ := p.variants(a)
		for _, v := range [2]*Variant{cheap, better} {
			sw, ok := SwapCost(s, v)
			if !ok {
				return Decision{}, false // a request of a gets a verdict whatever its deadline
			}
			tmax = max(tmax, sw+v.LatencyAt(1))
		}
	}
	target := max(4*p.o.MaxBatch, 128)
	var v []*Request
	for {
		for len(v) < target {
			r := x.popEarliest(target - len(v) - 1)
			if r == nil {
				break
			}
			v = append(v, r)
		}
		next := x.peekEarliest()
		if x.broken || next == nil || 4*len(v) > len(s.Queue) {
			return Decision{}, false
		}
		if next.Deadline.Sub(now) > tmax && c.sum.fits(now, next.Deadline) {
			sub := *s
			sub.Queue = slices.Clone(v)
			slices.SortFunc(sub.Queue, func(a, b *Request) int { return cmp.Compare(a.Seq, b.Seq) })
			for i := 1; i < len(sub.Queue); i++ {
				if sub.Queue[i].Seq == sub.Queue[i-1].Seq {
					c.valid = false // indexed twice: the index is lost
					return Decision{}, false
				}
			}
			d, short := p.decideOn(&sub, th)
			if !short || d.Batch != nil && c.all(sub.Queue, d.Batch.Requests[0]) {
				p.boundedHits++
				return d, true
			}
		}
		target *= 2
	}
}

// all reports whether v holds every queued request of head's application and
// pass.
func (c *cascadeIndex) all(v []*Request, head *Request) bool {
	k := cascadeKind{head.App, head.First == nil}
	n := 0
	for _, r := range v {
		if r.App == k.app && (r.First == nil) == k.first {
			n++
		}
	}
	return n == c.sum.count[k]
}

// cascadeKind is an application and a pass (first or second).
type cascadeKind struct {
	app   *App
	first bool
}

// cascadeSum summarises the queue for bounded: per deadline bucket the cost
// the shedding walk charges its requests (the pass's variant's amortised time
// with shedHeadroom), and per application and pass the number of requests. It
// is kept between decisions (added to and taken from with the index) and
// rebuilt from the queue with the index, or when a deadline falls outside its
// buckets.
type cascadeSum struct {
	valid bool
	costs map[cascadeKind]time.Duration
	count map[cascadeKind]int
	base  time.Time
	width time.Duration
	work  []time.Duration
	total time.Duration
}

const cascadeSumBuckets = 8192

// same reports whether the summary's costs are those of p for apps.
func (h *cascadeSum) same(p *cascade, apps map[string]*App) bool {
	if len(h.costs) != 2*len(apps) {
		return false
	}
	for _, a := range apps {
		for _, first := range [2]bool{true, false} {
			if c, ok := h.costs[cascadeKind{a, first}]; !ok || c != p.passCost(a, first) {
				return false
			}
		}
	}
	return true
}

func (h *cascadeSum) rebuild(p *cascade, s *Snapshot) {
	if h.costs == nil {
		h.costs, h.count = map[cascadeKind]time.Duration{}, map[cascadeKind]int{}
	}
	clear(h.costs)
	clear(h.count)
	for _, a := range s.Apps {
		for _, first := range [2]bool{true, false} {
			h.costs[cascadeKind{a, first}] = p.passCost(a, first)
		}
	}
	h.base, h.width = deadlineBuckets(s, cascadeSumBuckets)
	h.work, h.total, h.valid = h.work[:0], 0, true
	for _, r := range s.Queue {
		h.add(p, r, r.First == nil)
	}
}

func (h *cascadeSum) add(p *cascade, r *Request, first bool) {
	k := cascadeKind{r.App, first}
	c, ok := h.costs[k]
	b := int(r.Deadline.Sub(h.base) / h.width)
	if !h.valid || !ok || r.Deadline.Before(h.base) || b >= cascadeSumBuckets {
		h.valid = false
		return
	}
	for len(h.work) <= b {
		h.work = append(h.work, 0)
	}
	h.work[b] += c
	h.total += c
	h.count[k]++
}

func (h *cascadeSum) remove(p *cascade, r *Request, first bool) {
	if !h.valid {
		return
	}
	k := cascadeKind{r.App, first}
	c := h.costs[k]
	h.work[int(r.Deadline.Sub(h.base)/h.width)] -= c
	h.total -= c
	h.count[k]--
}

// fits reports whether the whole queue's shedding walk at now drops nothing
// due at or after from: for every bucket from from's on, the cost of the
// requests due by its end fits before its start (and before from).
func (h *cascadeSum) fits(now, from time.Time) bool {
	if !h.valid {
		return false
	}
	b0 := int(from.Sub(h.base) / h.width)
	var cum time.Duration
	for b, w := range h.work {
		cum += w
		if b < b0 {
			continue
		}
		start := h.base.Add(time.Duration(b) * h.width)
		if now.Add(cum).After(start) && now.Add(cum).After(from) {
			return false
		}
		if start.Sub(now) >= h.total {
			return true
		}
	}
	return true
}
