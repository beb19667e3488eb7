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
// shed, and is outside the window and the batch. bounded decides over L
// requests V, the earliest-deadline ones as first written (below for how they
// are taken now; from a deadline index kept between decisions, index.go), and
// keeps the result only when these bounds prove that the requests after V
// could not have changed it:
//
//   - verdicts: every request after V has at least dl_next (the earliest
//     deadline after V) left, and dl_next is past every variant's swap plus
//     batch-1 latency, so every variant would be on time for it: the prepass
//     gives it no verdict, unless its estimate is worth more than any model
//     (answersFromEstimate, whatever its deadline). Admission answers those
//     (Decision.Answers, EstimateRule), and the few queued that it did not
//     test (noteEstimateAnswers reads each arrival once) are answered with
//     the prefix's verdicts, in Seq order (pendingBeyond);
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
// After the queue has turned over, a prefix by deadline no longer serves: the
// requests a policy values most (a class, for sneakpeek; an application) have
// been served far ahead while the others wait at near deadlines, so the window
// reaches past any short prefix by deadline, and the fill's class has few
// requests left in it. So the index and the largest stake are kept per
// application, and per class for a policy that groups by class (sneakpeek:
// queueIndex.class, workHist.classPriority), and
//
//   - V is the L requests with the highest priority bound, their class's (or
//     application's) largest stake over their time left (takeByClass): per
//     class a prefix by deadline, for one application and no classes the
//     prefix by deadline. The verdict and shedding bounds hold as above
//     (dl_next is the earliest deadline after V; shedding nothing over the
//     whole queue, the walk sheds nothing over any part of it), and the
//     window's bound is the highest bound of the classes' next requests (or
//     the summary's, when lower);
//   - sneakpeek's fill takes the candidates of its classes beyond V from the
//     index in deadline order (pullFill) until the class's bound from the
//     next one is below the lowest priority the fill would take.
//
// When a bound fails, L doubles; past a quarter of the queue the decision is
// made over the whole queue. TestBoundedDecisionEqualsFull and, after the
// queue has turned over, TestBoundedDecisionEqualsFullTurnedOver check the
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
	// pull, when not nil, gives the fill the requests of a class beyond the
	// prefix (a policy that groups by class); filledBeyond records that the
	// fill took one; fillAnswered that it met one the prepass answers
	// (pullFill), which makes the decision short.
	pull                       *classPull
	filledBeyond, fillAnswered bool
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
	p.ix.class = p.hist.byClass
	p.ix.sync(s)
	defer p.ix.restore()
	if p.ix.broken {
		return Decision{}, false
	}
	target := max(boundedStart*p.o.Window, 512)
	var v []*Request
	for {
		var next *Request
		var restPri float64
		v, next, restPri = p.takeByClass(s.Now, probe, v, target)
		if p.ix.broken || next == nil || 4*len(v) > len(s.Queue) {
			return Decision{}, false
		}
		dlNext := next.Deadline.Sub(s.Now)
		if dlNext >= tmax {
			sub := *s
			sub.Queue = slices.Clone(v)
			slices.SortFunc(sub.Queue, func(a, b *Request) int { return cmp.Compare(a.Seq, b.Seq) })
			p.bound = boundInfo{on: true, low: math.Inf(1)}
			if p.ix.class {
				p.pull.reset(&p.ix, &p.hist)
				p.bound.pull = &p.pull
			}
			// Queued requests beyond the prefix that the estimate answers
			// (noteEstimateAnswers) get their verdicts here, as over the
			// whole queue, and are not backlog.
			beyond := p.pendingBeyond(s.Queue, v)
			d := p.decideOn(&sub, arrivals, len(s.Queue)-len(v)-len(beyond), beyond...)
			b := p.bound
			p.bound = boundInfo{}
			if b.fillAnswered {
				p.fillAnswered++
			}
			if !b.short && !(restPri < b.low) {
				// The bound by deadline bucket may be the tighter.
				restPri = min(restPri, p.hist.restPriority(s.Now, next.Deadline))
			}
			if !b.short && !p.ix.broken && restPri < b.low {
				p.pull.reset(nil, nil)
				p.ix.note(d)
				p.boundedHits++
				if b.filledBeyond {
					p.beyondHits++
				}
				return d, true
			}
			// What the fill took beyond the prefix goes back, for a longer
			// prefix to take in deadline order.
			p.pull.giveBack()
			p.pull.reset(nil, nil)
		}
		target *= 2
	}
}

// classHead is the next request of one class's deadline queue beyond the
// prefix (takeByClass), and the largest priority it or any later one of the
// class may have.
type classHead struct {
	ai    *appIndex
	e     keyEntry
	bound float64
	ok    bool
}

// takeByClass grows the prefix v to target requests, taking next the
// request, among the next by deadline of each class (each application, for an
// index not kept per class), whose priority bound (workHist.classPriority
// from its deadline) is the highest, the earlier deadline on ties: in a queue where some classes wait at near deadlines
// while others are served far ahead, the window then lies within the
// prefix. It returns the prefix, the earliest-deadline request after it (nil
// when none is left, or the index broke) and the largest priority of any
// request after it (the highest bound of the classes' next requests).
func (p *searching) takeByClass(now time.Time, probe *decisionState, v []*Request, target int) ([]*Request, *Request, float64) {
	x := &p.ix
	hs := p.heads[:0]
	defer func() { clear(hs) }() // the entries' requests may leave the queue
	share := (target - len(v)) / max(len(x.byApp), 1)
	head := func(h *classHead) {
		e := x.peek(h.ai, share)
		h.ok = e != nil
		if h.ok {
			h.e = *e
			h.bound = p.hist.classPriority(h.ai.app, h.ai.class, now, e.r.Deadline, probe.info(h.ai.app).fastest)
		}
	}
	for _, ai := range x.byApp {
		hs = append(hs, classHead{ai: ai})
		head(&hs[len(hs)-1])
	}
	p.heads = hs
	best := func() *classHead {
		var b *classHead
		for i := range hs {
			h := &hs[i]
			if h.ok && (b == nil || h.bound > b.bound || !(h.bound < b.bound) && keyEntryLess(h.e, b.e)) {
				b = h
			}
		}
		return b
	}
	for len(v) < target && !x.broken {
		h := best()
		if h == nil {
			break
		}
		x.take(h.ai)
		v = append(v, h.e.r)
		head(h)
	}
	if x.broken {
		return v, nil, math.Inf(1)
	}
	var next *Request
	rest := math.Inf(-1)
	for i := range hs {
		if h := &hs[i]; h.ok {
			if next == nil || keyEntryLess(h.e, entryOf(next.Deadline.Sub(x.ref), next)) {
				next = h.e.r
			}
			rest = max(rest, h.bound)
		}
	}
	return v, next, rest
}

// classPull takes, for the fill of a decision over a prefix (pullFill), the
// requests of a class beyond the prefix from the queue index kept per class,
// in deadline order; a later round of the same decision finds those taken.
type classPull struct {
	ix   *queueIndex
	hist *workHist
	keys []*pullKey
}

// pullKey is what classPull took of one application's class.
type pullKey struct {
	app   *App
	class int
	ai    *appIndex // nil when the index holds none of the class
	rs    []*Request
	done  bool
}

func noSkip(*Request) bool { return false }

// reset forgets what was taken (to be used with ix and hist).
func (c *classPull) reset(ix *queueIndex, hist *workHist) {
	c.ix, c.hist = ix, hist
	clear(c.keys)
	c.keys = c.keys[:0]
}

// key is app's class's record.
func (c *classPull) key(app *App, class int) *pullKey {
	for _, k := range c.keys {
		if k.app == app && k.class == class {
			return k
		}
	}
	k := &pullKey{app: app, class: class, ai: c.ix.ofClass(app, class)}
	c.keys = append(c.keys, k)
	return k
}

// at is the i-th request of k's class beyond the prefix, by deadline (taken
// from the index if not yet); nil when there is none (or the index broke).
// more is how many the caller may take after it.
func (c *classPull) at(k *pullKey, i, more int) *Request {
	for len(k.rs) <= i {
		if k.done || k.ai == nil || c.ix.broken {
			return nil
		}
		r := c.ix.nextByDeadline(k.ai, noSkip, more)
		if r == nil {
			k.done = true
			return nil
		}
		k.rs = append(k.rs, r)
	}
	return k.rs[i]
}

// giveBack returns what was taken to the index (queueIndex.untake), so that
// the index again hands out every request after the prefix in order.
func (c *classPull) giveBack() {
	for _, k := range c.keys {
		if k.ai != nil {
			c.ix.untake(k.ai, len(k.rs))
		}
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
// queue; anything else that leaves (rare) stays counted, which only overstates.
// So that the maxima come down again and the buckets follow the deadlines, a
// fresh summary is being built beside it (next), a part of the queue at each
// decision, and replaces it once it has read the whole queue: it reads
// histScan queued requests per request that arrived or left since the last
// decision (at least histScanMin; none while most of the queue turns over at
// each decision, histChurn), so that it costs a decision in proportion to
// what the decision schedules, and no decision pays for a pass over the whole
// queue (the summary used to be rebuilt from the whole queue every 256
// decisions: at 100k queued about 16 ms, 20-28 ms with the decision around
// it). The summary is built from the whole queue at once only when there is
// none to keep (the first decision over a long queue, or the first after
// decisions below boundedMin) or it cannot be kept (an application, a
// shedding cost or a feasible variant changed, a deadline beyond its
// buckets); rebuilds counts those.
type workHist struct {
	valid bool
	ctx   histCtx
	histSum
	// seen is the newest Seq counted; decided the requests the last decision
	// answered or batched, to subtract once they have left the queue.
	seen    uint64
	decided []*Request
	// byClass: cstake is kept per class (Request.Class), not per application.
	byClass bool
	// next is the summary being built (nil when none): it has read the
	// queued requests with a Seq below from, and counts every arrival with a
	// Seq above upto (the newest this one had counted when it began). spare
	// keeps the buffers of the one it last replaced.
	next, spare *histSum
	from, upto  uint64
	// find and seqs look the decided requests up in the queue.
	find seqFinder
	seqs []seqSearch
	// rebuilds counts the rebuilds from the whole queue at once, swaps the
	// summaries built a part at a time that replaced the summary (tests).
	rebuilds, swaps int
}

// histSum is what a summary counts: the buckets (from base, each width wide),
// their work and largest stakes, the total work, and cstake, per application
// and, with byClass, class (Request.Class), the largest stake among its
// requests (cstake[app][class+1]; [app][0] without byClass), for
// classPriority; lastApp and lastStake cache the last lookup.
type histSum struct {
	base      time.Time
	width     time.Duration
	work      []time.Duration
	stake     []float64
	total     time.Duration
	cstake    map[*App][]float64
	lastApp   *App
	lastStake []float64
}

const (
	histMaxBuckets = 8192
	// histScan queued requests are read for the summary being built per
	// request that arrived or left since the last decision, histScanMin at
	// least: at 100k queued, with 32 leaving and 32 arriving a decision, it
	// replaces the summary every 780 decisions, after a quarter of the queue
	// has turned over. After a decision where more than a histChurn-th of
	// the queue turned over (overloaded, a decision that sheds tens of
	// thousands; it is made over the whole queue, since the summary does not
	// show that nothing would be shed) none is read, and the summary being
	// built is dropped: reading twice as many, and keeping two summaries up to
	// date, made such a decision 15-30% dearer at 100k queued
	// (BenchmarkDecideSteady, overloaded).
	histScan    = 2
	histScanMin = 64
	histChurn   = 16
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

// rebuild summarises the whole queue at once.
func (h *workHist) rebuild(s *Snapshot, ctx histCtx) {
	h.rebuilds++
	h.valid, h.ctx = false, ctx
	h.decided = h.decided[:0]
	h.drop()
	if len(s.Queue) == 0 {
		return
	}
	h.histSum.reset(deadlineBuckets(s, histMaxBuckets))
	for _, r := range s.Queue {
		if !h.add(&h.histSum, r, h.ctx.stakeOf(r)) {
			return
		}
	}
	h.valid = true
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
	return spanBuckets(first, last, buckets)
}

// spanBuckets keys buckets of deadlines from first to last (deadlineBuckets).
func spanBuckets(first, last time.Time, buckets int) (base time.Time, width time.Duration) {
	width = max(time.Millisecond, last.Sub(first)/time.Duration(buckets/4))
	return first.Truncate(width), width
}

// reset empties m (keeping its buffers) for buckets from base, width wide.
func (m *histSum) reset(base time.Time, width time.Duration) {
	m.base, m.width, m.total = base, width, 0
	m.work, m.stake = m.work[:0], m.stake[:0]
	clear(m.cstake)
	m.lastApp, m.lastStake = nil, nil
}

// add counts r, whose stake is st, in m; false when r is not summarisable
// there (then m is not valid).
func (h *workHist) add(m *histSum, r *Request, st float64) bool {
	c, ok := h.ctx.costs[r.App]
	b := int(r.Deadline.Sub(m.base) / m.width)
	if !ok || r.Deadline.Before(m.base) || b >= histMaxBuckets {
		return false
	}
	for len(m.work) <= b {
		m.work = append(m.work, 0)
		m.stake = append(m.stake, math.Inf(-1))
	}
	m.work[b] += c
	m.total += c
	m.stake[b] = max(m.stake[b], st)
	return h.noteClass(m, r, st)
}

// noteClass counts r's stake st in its class's largest in m (its
// application's without byClass); false for a class Prepare does not give.
func (h *workHist) noteClass(m *histSum, r *Request, st float64) bool {
	if r.App != m.lastApp {
		if m.cstake == nil {
			m.cstake = map[*App][]float64{}
		}
		m.lastApp, m.lastStake = r.App, m.cstake[r.App]
	}
	k := 0
	if h.byClass {
		k = r.Class + 1
	}
	if k < 0 {
		return false
	}
	if k >= len(m.lastStake) {
		for len(m.lastStake) <= k {
			m.lastStake = append(m.lastStake, math.Inf(-1))
		}
		m.cstake[r.App] = m.lastStake
	}
	m.lastStake[k] = max(m.lastStake[k], st)
	return true
}

// classPriority bounds the priority of every queued request of app's class
// (of app, for class -1 without byClass) whose deadline is at or after from (after now): the class's largest stake
// over the time left, at least from - now and fastest (the application's
// fastest variant, as the prepass counts it) for a stake that is not
// negative, at most to the end of the last bucket for one that is; with a
// margin for rounding. +Inf when the class's stake is not known.
func (h *workHist) classPriority(app *App, class int, now, from time.Time, fastest time.Duration) float64 {
	st := h.cstake[app]
	k := class + 1
	if k < 0 || k >= len(st) || math.IsInf(st[k], -1) {
		return math.Inf(1)
	}
	x := st[k]
	if x >= 0 {
		return x / max(from.Sub(now), fastest).Seconds() * (1 + 1e-9)
	}
	end := h.base.Add(time.Duration(len(h.work)) * h.width).Sub(now)
	return x / max(end, fastest).Seconds() * (1 - 1e-9)
}

// update brings the summary up to s: the decided requests that left are
// subtracted, the new arrivals added, and the summary being built reads its
// next part of the queue (scan). It reports whether the summary is valid for
// s (same applications, costs and feasible variants, every deadline within
// its buckets); when it is not, the caller rebuilds it.
func (h *workHist) update(s *Snapshot, ctx histCtx) bool {
	if !h.valid || !h.ctx.same(ctx) {
		h.valid = false
		return false
	}
	h.ctx.d = ctx.d
	moved := 0
	gone := func(r *Request) {
		c := h.ctx.costs[r.App]
		h.work[int(r.Deadline.Sub(h.base)/h.width)] -= c
		h.total -= c
		if n := h.next; n != nil && (r.Seq < h.from || r.Seq > h.upto) {
			// read (or arrived) since it began
			n.work[int(r.Deadline.Sub(n.base)/n.width)] -= c
			n.total -= c
		}
		moved++
	}
	if q := s.Queue; manySearches(len(h.decided), len(q)) {
		lo := 0
		for i, r := range h.decided {
			if i > 0 && r.Seq < h.decided[i-1].Seq {
				lo = 0
			}
			var hit bool
			if lo, hit = gallop(q, lo, r.Seq); !hit {
				gone(r)
			}
		}
	} else if len(h.decided) > 0 {
		h.find.reset(q)
		h.seqs = h.seqs[:0]
		for i, r := range h.decided {
			h.seqs = append(h.seqs, seqSearch{seq: r.Seq, at: i})
		}
		h.find.findAll(h.seqs)
		for _, x := range h.seqs {
			if !x.hit {
				gone(h.decided[x.at])
			}
		}
		h.find.reset(nil)
	}
	// Not cleared: a decision that shed tens of thousands would pay the
	// garbage collector's write barrier for each (as much as the searches).
	h.decided = h.decided[:0]
	start := len(s.Queue)
	for start > 0 && s.Queue[start-1].Seq > h.seen {
		start--
	}
	moved += len(s.Queue) - start
	churn := moved > len(s.Queue)/histChurn
	if churn {
		// Most of the queue turns over (a decision shed thousands): the
		// summary being built would read the queue for nothing while
		// keeping it up to date doubled the cost of every request that
		// arrives and leaves. It begins again at a quieter decision.
		h.drop()
	}
	for _, r := range s.Queue[start:] {
		st := h.ctx.stakeOf(r)
		if !h.add(&h.histSum, r, st) {
			h.valid = false
			return false
		}
		if h.next != nil && !h.add(h.next, r, st) {
			h.drop()
		}
		h.seen = r.Seq
	}
	if !churn {
		h.scan(s, max(histScanMin, histScan*moved))
	}
	return true
}

// scan reads up to budget queued requests into the summary being built
// (beginning one if none is), from where it stopped; when it has read the
// whole queue it replaces the summary.
func (h *workHist) scan(s *Snapshot, budget int) {
	if h.next == nil {
		h.begin(s.Now)
	}
	n, q := h.next, s.Queue
	j, _ := slices.BinarySearchFunc(q, h.from, func(r *Request, seq uint64) int { return cmp.Compare(r.Seq, seq) })
	for end := j + budget; j < len(q) && j < end && q[j].Seq <= h.upto; j++ {
		if !h.add(n, q[j], h.ctx.stakeOf(q[j])) {
			h.drop() // a deadline before its buckets: begin again
			return
		}
	}
	if j < len(q) && q[j].Seq <= h.upto {
		h.from = q[j].Seq
		return
	}
	h.histSum, *n = *n, h.histSum
	h.next, h.spare = nil, n
	h.swaps++
}

// begin starts the summary to be built, its buckets keyed as a rebuild's
// would be (deadlineBuckets) from the span of the deadlines the summary
// holds (the buckets it counts work in, and now): every queued request is
// counted in one of them.
func (h *workHist) begin(now time.Time) {
	first, last := now, now
	lo, hi := -1, -1
	for b, w := range h.work {
		if w > 0 {
			if lo < 0 {
				lo = b
			}
			hi = b
		}
	}
	if lo >= 0 {
		if t := h.base.Add(time.Duration(lo) * h.width); t.Before(first) {
			first = t
		}
		if t := h.base.Add(time.Duration(hi+1) * h.width); t.After(last) {
			last = t
		}
	}
	n := h.spare
	if n == nil {
		n = &histSum{}
	}
	n.reset(spanBuckets(first, last, histMaxBuckets))
	h.next, h.spare = n, nil
	h.from, h.upto = 0, h.seen
}

// drop forgets the summary being built (keeping its buffers).
func (h *workHist) drop() {
	if h.next != nil {
		h.next, h.spare = nil, h.next
	}
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
// least from - now and the bucket's start; for a negative stake, whose
// priority is the highest at the latest deadline, at most the bucket's end.
func (h *workHist) restPriority(now, from time.Time) float64 {
	hi := math.Inf(-1)
	floor := from.Sub(now).Seconds()
	for b := max(0, int(from.Sub(h.base)/h.width)); b < len(h.stake); b++ {
		if math.IsInf(h.stake[b], -1) {
			continue
		}
		at := b
		if h.stake[b] < 0 {
			at = b + 1
		}
		left := max(floor, h.base.Add(time.Duration(at)*h.width).Sub(now).Seconds())
		hi = max(hi, h.stake[b]/left)
	}
	return hi
}
