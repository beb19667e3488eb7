package scheduler

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// This file lets the searching policies decide from a prefix of the queue when
// the queue is long, so that a decision costs what it schedules rather than
// what is queued (issue 10: at 100k queued, within 2x of the cost per
// scheduled request at 1k), and still makes the decision the whole queue would.
//
// A decision over the whole queue (prepass, shed, window, price, search, fill)
// reads a far-deadline request only to conclude that it gets no verdict, is not
// shed, and is outside the window and the batch. bounded decides over the L
// earliest-deadline requests V (taken from a deadline index kept between
// decisions, index.go), and keeps the result only when these bounds prove that
// the requests after V could not have changed it:
//
//   - verdicts: every request after V has at least dl_next (the earliest
//     deadline after V) left, and dl_next is past every variant's swap plus
//     batch-1 latency, so every variant would be on time for it: the prepass
//     gives it no verdict;
//   - shedding: workHist, a conservative summary of the whole queue's engine
//     work by deadline, shows that the shedding walk over the whole queue would
//     shed nothing (then the walk over V, whose constraints are a prefix of the
//     same walk, sheds nothing either);
//   - window and fill: a request after V has priority at most
//     maxStake/dl_next (maxStake bounds the stake sum/feasible of the prepass),
//     which must be below the lowest priority the window took and the lowest
//     the fill took, and the window and the fill must have found all they
//     wanted in V;
//   - the price counts the requests after V in the backlog as the whole
//     queue's decision does (decisionState.extraBacklog).
//
// When a bound fails, L doubles; past a quarter of the queue the decision is
// made over the whole queue. TestBoundedDecisionEqualsFull checks the
// equivalence over long random runs.

// boundedMin is the queue length from which a searching policy tries a bounded
// decision; below it a decision over the whole queue is cheap enough.
const boundedMin = 4096

// boundedStart is the first prefix tried, as a multiple of the window.
const boundedStart = 4

// boundInfo records, during a decision over a prefix, what the bounds need: the
// lowest priority the windows and the fills took, and whether one of them
// wanted more members than the prefix had.
type boundInfo struct {
	on    bool
	short bool
	low   float64
}

func (b *boundInfo) took(pri float64) {
	if b.on {
		b.low = min(b.low, pri)
	}
}

func (b *boundInfo) lacked() {
	if b.on {
		b.short = true
	}
}

// bounded makes the decision from a prefix of the queue by deadline when it can
// prove it the same as the whole queue's; ok is false when the caller must
// decide over the whole queue. probe is a decision state of s for its
// per-application facts (the one the caller built the summary's context with).
func (p *searching) bounded(s *Snapshot, probe *decisionState, arrivals float64) (Decision, bool) {
	var tmax time.Duration
	minFast := time.Duration(-1)
	for _, a := range s.Apps {
		ai := probe.info(a)
		any := false
		for i, ok := range ai.ok0 {
			if ok {
				any = true
				tmax = max(tmax, ai.cost0[i]+ai.lat1[i])
			}
		}
		if !any {
			return Decision{}, false // a request of a would be expired whatever its deadline
		}
		if minFast < 0 || ai.fastest < minFast {
			minFast = ai.fastest
		}
	}
	if !p.hist.fits(s.Now, minFast) {
		return Decision{}, false
	}
	p.ix.deadline = true
	p.ix.sync(s)
	defer p.ix.restore()
	if p.ix.broken {
		return Decision{}, false
	}
	target := max(boundedStart*p.o.Window, 512)
	var v []*Request
	for {
		for len(v) < target {
			r := p.ix.popEarliest(target - len(v) - 1)
			if r == nil {
				break
			}
			v = append(v, r)
		}
		next := p.ix.peekEarliest()
		if p.ix.broken || next == nil || 4*len(v) > len(s.Queue) {
			return Decision{}, false
		}
		dlNext := next.Deadline.Sub(s.Now)
		if dlNext >= tmax {
			sub := *s
			sub.Queue = slices.Clone(v)
			slices.SortFunc(sub.Queue, func(a, b *Request) int { return cmp.Compare(a.Seq, b.Seq) })
			p.bound = boundInfo{on: true, low: math.Inf(1)}
			d := p.decideOn(&sub, arrivals, len(s.Queue)-len(v))
			b := p.bound
			p.bound = boundInfo{}
			if !b.short && p.hist.restPriority(s.Now, next.Deadline) < b.low {
				p.boundedHits++
				return d, true
			}
		}
		target *= 2
	}
}

// workHist is a conservative summary of the queue by deadline, kept between
// decisions. Per bucket of deadlines it holds the engine work of the requests
// in it (each adds its application's shedding cost: the cheapest variant's
// amortised time with shedHeadroom, as shed.go charges it) and the largest
// stake among them (what the prepass divides by the time left to get a
// priority). From it, in time proportional to the number of buckets:
//
//   - fits says whether the shedding walk over the whole queue would shed
//     nothing: the work with a deadline up to the end of each bucket fits in
//     the time to the bucket's start, so every request in it meets the walk's
//     constraint;
//   - restPriority bounds the priority of any request with a deadline from a
//     given time on.
//
// New arrivals are added and requests the policy answered or batched are
// removed (their work; a stake maximum is not lowered) when they have left the
// queue; anything else that leaves (rare) stays counted, which only overstates,
// until the next rebuild from the whole queue (every decision over the whole
// queue, and every histRebuild bounded ones).
type workHist struct {
	valid bool
	ctx   histCtx
	base  time.Time
	width time.Duration
	work  []time.Duration
	stake []float64
	total time.Duration
	// seen is the newest Seq counted; decided the requests the last decision
	// answered or batched, to subtract once they have left the queue.
	seen    uint64
	decided []*Request
	age     int
}

const (
	histMaxBuckets = 8192
	histRebuild    = 256
)

// histCtx is what a summary depends on besides the queue: per application the
// shedding cost per request and which variants can be made resident (the
// prepass's feasible set), and the policy's view of utility.
type histCtx struct {
	costs map[*App]time.Duration
	ok    map[*App][]bool
	d     *decisionState
}

func newHistCtx(d *decisionState, apps map[string]*App) histCtx {
	c := histCtx{costs: make(map[*App]time.Duration, len(apps)), ok: make(map[*App][]bool, len(apps)), d: d}
	for _, a := range apps {
		ai := d.info(a)
		c.costs[a], c.ok[a] = ai.shedCost, ai.ok0
	}
	return c
}

// same reports whether two contexts summarise alike.
func (c histCtx) same(o histCtx) bool {
	if len(c.costs) != len(o.costs) {
		return false
	}
	for a, x := range c.costs {
		if y, ok := o.costs[a]; !ok || x != y || !slices.Equal(c.ok[a], o.ok[a]) {
			return false
		}
	}
	return true
}

// stakeOf bounds r's stake: the mean over the feasible variants of its believed
// on-time utility minus its value of no answer (a late result is worth no more
// than on time, so the prepass's sum is at most this).
func (c histCtx) stakeOf(r *Request) float64 {
	d := c.d
	ai := d.info(r.App)
	u, na := ai.profiled, ai.na
	if d.w.dataAware {
		u, na = r.ExpUtility, r.NoAnswerUtility
	}
	sum, n := 0.0, 0
	for i, ok := range ai.ok0 {
		if ok {
			x := u[i]
			if d.w.dataAware && d.shrink > 0 {
				x = (1-d.shrink)*x + d.shrink*ai.profiled[i]
			}
			sum += x - na
			n++
		}
	}
	return sum / float64(max(n, 1))
}

// rebuild summarises the whole queue.
func (h *workHist) rebuild(s *Snapshot, ctx histCtx) {
	h.valid, h.ctx, h.age, h.total = false, ctx, 0, 0
	h.decided = h.decided[:0]
	if len(s.Queue) == 0 {
		return
	}
	h.base, h.width = deadlineBuckets(s, histMaxBuckets)
	h.work, h.stake = h.work[:0], h.stake[:0]
	h.valid = true
	for _, r := range s.Queue {
		if !h.add(r) {
			return
		}
	}
	h.seen = s.Queue[len(s.Queue)-1].Seq
}

// deadlineBuckets keys buckets of deadlines for a summary of s's queue with
// at most buckets of them: the span from the earliest of its deadlines and
// s.Now to the latest is a quarter of them (each at least a millisecond
// wide), from a base at the earliest, truncated to the width. The summaries
// of bounded decisions (workHist, and the cascade's cascadeSum) use it.
func deadlineBuckets(s *Snapshot, buckets int) (base time.Time, width time.Duration) {
	first, last := s.Now, s.Now
	for _, r := range s.Queue {
		if r.Deadline.Before(first) {
			first = r.Deadline
		}
		if r.Deadline.After(last) {
			last = r.Deadline
		}
	}
	width = max(time.Millisecond, last.Sub(first)/time.Duration(buckets/4))
	return first.Truncate(width), width
}

// add counts r; false (and the summary invalid) when r is not summarisable.
func (h *workHist) add(r *Request) bool {
	c, ok := h.ctx.costs[r.App]
	b := int(r.Deadline.Sub(h.base) / h.width)
	if !ok || r.Deadline.Before(h.base) || b >= histMaxBuckets {
		h.valid = false
		return false
	}
	for len(h.work) <= b {
		h.work = append(h.work, 0)
		h.stake = append(h.stake, math.Inf(-1))
	}
	h.work[b] += c
	h.total += c
	h.stake[b] = max(h.stake[b], h.ctx.stakeOf(r))
	return true
}

// update brings the summary up to s: the decided requests that left are
// subtracted and the new arrivals added. It reports whether the summary is
// valid for s (same applications, costs and feasible variants).
func (h *workHist) update(s *Snapshot, ctx histCtx) bool {
	if !h.valid || h.age >= histRebuild || !h.ctx.same(ctx) {
		h.valid = false
		return false
	}
	h.ctx.d = ctx.d
	for _, r := range h.decided {
		if _, found := slices.BinarySearchFunc(s.Queue, r.Seq, func(y *Request, seq uint64) int { return cmp.Compare(y.Seq, seq) }); !found {
			c := h.ctx.costs[r.App]
			h.work[int(r.Deadline.Sub(h.base)/h.width)] -= c
			h.total -= c
		}
	}
	h.decided = h.decided[:0]
	start := len(s.Queue)
	for start > 0 && s.Queue[start-1].Seq > h.seen {
		start--
	}
	for _, r := range s.Queue[start:] {
		if !h.add(r) {
			return false
		}
		h.seen = r.Seq
	}
	h.age++
	return true
}

// note records a decision's answered and batched requests, to subtract once
// they have left the queue.
func (h *workHist) note(d Decision) {
	if !h.valid {
		return
	}
	for _, v := range d.Verdicts {
		h.decided = append(h.decided, v.Request)
	}
	if d.Batch != nil {
		h.decided = append(h.decided, d.Batch.Requests...)
	}
}

// fits reports whether the whole queue's shedding walk at now sheds nothing:
// for every bucket starting at least minFast from now (the walk's constraint
// is not checked for a request already too late for the fastest variant), the
// work with a deadline up to the bucket's end fits in the time to its start.
func (h *workHist) fits(now time.Time, minFast time.Duration) bool {
	if !h.valid {
		return false
	}
	var cum time.Duration
	for b, w := range h.work {
		rel := h.base.Add(time.Duration(b) * h.width).Sub(now)
		cum += w
		if rel >= minFast && cum > rel {
			return false
		}
		if rel >= h.total {
			return true
		}
	}
	return true
}

// restPriority bounds the priority of every queued request whose deadline is at
// or after from (which must be after now): its stake over the time left, at
// least from - now.
func (h *workHist) restPriority(now, from time.Time) float64 {
	hi := math.Inf(-1)
	floor := from.Sub(now).Seconds()
	for b := max(0, int(from.Sub(h.base)/h.width)); b < len(h.stake); b++ {
		if math.IsInf(h.stake[b], -1) {
			continue
		}
		left := max(floor, h.base.Add(time.Duration(b)*h.width).Sub(now).Seconds())
		hi = max(hi, h.stake[b]/left)
	}
	return hi
}
