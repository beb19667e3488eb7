package scheduler

import (
	"cmp"
	"slices"
	"time"
)

func init() { Register("fixed-batch", newFixedBatch) }

// fixedBatch is what a Triton-style server does: one variant per application
// (FixedVariant, else the most accurate), a dynamic batcher per application that
// runs a batch as soon as MaxBatch requests wait or the oldest has waited
// MaxQueueDelay in the queue (from Request.QueuedAt: the time admission and the
// journal took before it is not the batcher's), and no notion of deadlines beyond expiring requests past their
// hard stop. Among ready applications the one with the oldest request goes first;
// when none is ready it asks to be woken when the first delay runs out.
type fixedBatch struct {
	o Options
	// ix keeps the queue per application in arrival order and by hard stop
	// between decisions (index.go); hopeless is per-decision scratch.
	ix       queueIndex
	hopeless map[*Request]bool
	// order and first are decideIndexed's scratch, kept from decision to
	// decision so that a decision allocates nothing but the batch it makes:
	// each application's first requests are a run of first, and the batch
	// picked gets a copy of its run.
	order []fixedApp
	first []*Request
}

// fixedApp is an application's part of a decision of decideIndexed.
type fixedApp struct {
	ai     *appIndex
	v      *Variant
	cap    int
	first  []*Request // up to cap, in arrival order
	oldest time.Time
}

func newFixedBatch(o Options) (Policy, error) {
	return &fixedBatch{o: o, ix: queueIndex{arrival: true, stop: true}, hopeless: map[*Request]bool{}}, nil
}

func (p *fixedBatch) Name() string { return "fixed-batch" }

// Decide makes the decision decideFull makes, from the index: the hopeless
// requests are a prefix of each application's hard-stop heap, and each
// application's batcher needs only its first requests in arrival order (the
// oldest, and whether a full batch waits), so a decision costs what it answers
// and batches (times the applications), not the queue.
func (p *fixedBatch) Decide(s *Snapshot) Decision {
	return p.ix.decide(s, p.decideIndexed, p.decideFull)
}

func (p *fixedBatch) decideIndexed(s *Snapshot) Decision {
	p.ix.sync(s)
	defer p.ix.restore()
	clear(p.hopeless)
	d := Decision{Verdicts: p.ix.hopeless(s.Now, nil, p.hopeless)}
	order, first := p.order[:0], p.first[:0]
	defer func() {
		// Keep the scratch's memory, not the requests it held.
		clear(first)
		p.order, p.first = order[:0], first[:0]
		clear(order[:cap(order)])
	}()
	for _, ai := range p.ix.byApp {
		a := ai.app
		v := fixedOrDefault(a, p.o)
		aq := fixedApp{ai: ai, v: v, cap: max(1, min(p.o.MaxBatch, v.MaxBatch()))}
		start := len(first)
		p.ix.arrivals(ai, func(r *Request) bool {
			if !p.hopeless[r] {
				first = append(first, r)
			}
			return len(first)-start < aq.cap
		})
		if len(first) > start {
			aq.first = first[start:len(first):len(first)]
			aq.oldest = aq.first[0].QueuedAt()
			order = append(order, aq)
		}
	}
	if p.ix.broken || len(order) == 0 {
		return d
	}
	// Applications in the order of their oldest request in the queue.
	slices.SortFunc(order, func(a, b fixedApp) int { return cmp.Compare(a.first[0].Seq, b.first[0].Seq) })
	var pick *fixedApp
	var wake time.Time
	for i := range order {
		aq := &order[i]
		due := aq.oldest.Add(p.o.MaxQueueDelay)
		if len(aq.first) >= aq.cap || !s.Now.Before(due) {
			pick = aq
			break
		}
		if wake.IsZero() || due.Before(wake) {
			wake = due
		}
	}
	if pick == nil {
		d.WakeAt = wake
		return d
	}
	sw, ok := PlanSwap(s, pick.v)
	if !ok {
		d.Verdicts = p.ix.expireApp(d.Verdicts, pick.ai, p.hopeless)
		return d
	}
	d.Batch = newBatch(s, pick.v, sw, slices.Clone(pick.first))
	return d
}

// decideFull is the decision from a scan of the whole queue; Decide makes the
// same one from the index.
func (p *fixedBatch) decideFull(s *Snapshot) Decision {
	vs, q := splitHopeless(s.Queue, s.Now)
	d := Decision{Verdicts: vs}
	if len(q) == 0 {
		return d
	}
	type appQ struct {
		v      *Variant
		cap    int
		n      int
		oldest time.Time
	}
	apps := make(map[*App]*appQ, len(s.Apps))
	var order []*App
	for _, r := range q {
		aq := apps[r.App]
		if aq == nil {
			v := fixedOrDefault(r.App, p.o)
			aq = &appQ{v: v, cap: max(1, min(p.o.MaxBatch, v.MaxBatch())), oldest: r.QueuedAt()}
			apps[r.App] = aq
			order = append(order, r.App)
		}
		aq.n++
	}
	var pick *App
	var wake time.Time
	for _, a := range order { // order of each application's oldest request
		aq := apps[a]
		due := aq.oldest.Add(p.o.MaxQueueDelay)
		if aq.n >= aq.cap || !s.Now.Before(due) {
			pick = a
			break
		}
		if wake.IsZero() || due.Before(wake) {
			wake = due
		}
	}
	if pick == nil {
		d.WakeAt = wake
		return d
	}
	aq := apps[pick]
	sw, ok := PlanSwap(s, aq.v)
	if !ok {
		d.Verdicts = expireApp(d.Verdicts, q, pick)
		return d
	}
	rs := make([]*Request, 0, min(aq.cap, aq.n))
	for _, r := range q {
		if r.App == pick {
			rs = append(rs, r)
			if len(rs) == aq.cap {
				break
			}
		}
	}
	d.Batch = newBatch(s, aq.v, sw, rs)
	return d
}
