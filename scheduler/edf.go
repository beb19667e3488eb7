package scheduler

import (
	"slices"
	"time"
)

func init() { Register("edf", newEDF) }

// edf serves the request with the earliest deadline first, batched with the next
// requests of the same application in deadline order, on the most accurate variant
// (by profiled accuracy) that still finishes the batch by the head's deadline; the
// batch is shrunk before a less accurate variant is tried. When no variant can meet
// the head's deadline, the head is answered degraded if it has an estimate, and
// otherwise run late on the variant that finishes first.
type edf struct {
	o Options
	// byAccuracy caches each application's variants, most accurate first.
	byAccuracy map[*App][]*Variant
	// ix keeps the queue by deadline and hard stop between decisions
	// (index.go); views, answered and hopeless are per-decision scratch.
	ix                 queueIndex
	views              []edfView
	answered, hopeless map[*Request]bool
}

// edfView is one application's requests in deadline order as far as a
// decision has taken them from the index (live and not hopeless).
type edfView struct {
	ai  *appIndex
	got []*Request
	// next is the first entry of got that may be unanswered.
	next int
}

func newEDF(o Options) (Policy, error) {
	return &edf{o: o, byAccuracy: map[*App][]*Variant{}, ix: queueIndex{deadline: true, stop: true},
		answered: map[*Request]bool{}, hopeless: map[*Request]bool{}}, nil
}

func (p *edf) Name() string { return "edf" }

func (p *edf) ranked(a *App) []*Variant {
	vs, ok := p.byAccuracy[a]
	if !ok {
		vs = slices.Clone(a.Variants)
		slices.SortStableFunc(vs, func(x, y *Variant) int {
			switch {
			case x.Accuracy > y.Accuracy:
				return -1
			case x.Accuracy < y.Accuracy:
				return 1
			}
			return 0
		})
		p.byAccuracy[a] = vs
	}
	return vs
}

// byDeadline sorts requests by deadline, then arrival.
func byDeadline(a, b *Request) int {
	if c := a.Deadline.Compare(b.Deadline); c != 0 {
		return c
	}
	switch {
	case a.Seq < b.Seq:
		return -1
	case a.Seq > b.Seq:
		return 1
	}
	return 0
}

// largestFitting returns the largest b <= n with v.LatencyAt(b) <= avail, 0 if none.
// Latency is assumed non-decreasing in b.
func largestFitting(v *Variant, n int, avail time.Duration) int {
	b := 0
	for b < n && v.LatencyAt(b+1) <= avail {
		b++
	}
	return b
}

// Decide makes the decision decideFull makes, from the index: the hopeless
// requests are a prefix of each application's hard-stop heap, and the heads and
// their batches come off the deadline heaps in order, so a decision costs
// O((answered + batched) log n) rather than a sort of the queue.
func (p *edf) Decide(s *Snapshot) Decision {
	return p.ix.decide(s, p.decideIndexed, p.decideFull)
}

// fetch makes sure v.got has more than k entries, taking them from the
// deadline index; it returns false when the application has no more. upTo is
// how far the caller expects to read (got[upTo]), to look them up together.
func (p *edf) fetch(v *edfView, k, upTo int) bool {
	skip := func(r *Request) bool { return p.hopeless[r] }
	for len(v.got) <= k {
		r := p.ix.nextByDeadline(v.ai, skip, max(upTo-len(v.got), 0))
		if r == nil {
			return false
		}
		v.got = append(v.got, r)
	}
	return true
}

func (p *edf) decideIndexed(s *Snapshot) Decision {
	p.ix.sync(s)
	clear(p.answered)
	clear(p.hopeless)
	defer func() {
		p.ix.restore()
		for i := range p.views {
			clear(p.views[i].got)
		}
		p.views = p.views[:0]
	}()
	d := Decision{Verdicts: p.ix.hopeless(s.Now, nil, p.hopeless)}
	for _, ai := range p.ix.byApp {
		p.views = append(p.views, edfView{ai: ai, got: p.viewBuf(len(p.views))})
	}
	limit := p.o.MaxBatch
	for {
		// The head: the earliest deadline among the applications' first
		// unanswered requests. With one application its batch follows.
		var hv *edfView
		for i := range p.views {
			v := &p.views[i]
			upTo := v.next
			if len(p.views) == 1 {
				upTo += limit - 1
			}
			for p.fetch(v, v.next, upTo) && p.answered[v.got[v.next]] {
				v.next++
			}
			if v.next < len(v.got) && (hv == nil || byDeadline(v.got[v.next], hv.got[hv.next]) < 0) {
				hv = v
			}
		}
		if p.ix.broken || hv == nil {
			return d
		}
		head := hv.got[hv.next]
		cands := make([]*Request, 0, limit)
		for k := hv.next; p.fetch(hv, k, hv.next+limit-1); k++ {
			if r := hv.got[k]; !p.answered[r] {
				cands = append(cands, r)
				if len(cands) == limit {
					break
				}
			}
		}
		if p.ix.broken {
			return d
		}
		if p.place(s, &d, head, cands, p.answered) {
			return d
		}
	}
}

// place runs head's batch (cands, head first, all of its application): on the
// most accurate variant that meets head's deadline with the largest batch that
// does, else on the one that finishes first; it reports whether d is complete
// (d.Batch set). When no variant can run at all the candidates expire; when none
// meets the deadline a head with an estimate is answered degraded instead (the
// caller goes on with the next head). Answered requests are marked in answered.
func (p *edf) place(s *Snapshot, d *Decision, head *Request, cands []*Request, answered map[*Request]bool) bool {
	var fallback *Batch
	for _, v := range p.ranked(head.App) {
		sw, ok := PlanSwap(s, v)
		if !ok {
			continue
		}
		n := min(len(cands), v.MaxBatch())
		if b := largestFitting(v, n, head.Deadline.Sub(s.Now)-sw.Cost); b > 0 {
			d.Batch = newBatch(s, v, sw, cands[:b])
			return true
		}
		if c := newBatch(s, v, sw, cands[:n]); fallback == nil || c.Finish.Before(fallback.Finish) {
			fallback = c
		}
	}
	switch {
	case fallback == nil:
		for _, r := range cands {
			d.Verdicts = append(d.Verdicts, Verdict{Request: r, Outcome: Expired, Reason: ReasonNoVariantFits})
			answered[r] = true
		}
	case head.P != nil:
		d.Verdicts = append(d.Verdicts, Verdict{Request: head, Outcome: Degraded, Reason: ReasonNoVariantInTime})
		answered[head] = true
	default:
		d.Batch = fallback
		return true
	}
	return false
}

// viewBuf returns the got buffer of the i-th view of an earlier decision, to
// reuse it.
func (p *edf) viewBuf(i int) []*Request {
	if i < cap(p.views) {
		return p.views[:i+1][i].got[:0]
	}
	return nil
}

// decideFull is the decision from the whole queue (sorted by deadline); Decide
// makes the same one from the index.
func (p *edf) decideFull(s *Snapshot) Decision {
	vs, q := splitHopeless(s.Queue, s.Now)
	d := Decision{Verdicts: vs}
	if len(q) == 0 {
		return d
	}
	q = slices.Clone(q)
	slices.SortFunc(q, byDeadline)
	answered := map[*Request]bool{}
	for i, head := range q {
		if answered[head] {
			continue
		}
		limit := p.o.MaxBatch
		cands := make([]*Request, 0, limit)
		for _, r := range q[i:] {
			if r.App == head.App && !answered[r] {
				cands = append(cands, r)
				if len(cands) == limit {
					break
				}
			}
		}
		if p.place(s, &d, head, cands, answered) {
			return d
		}
	}
	return d
}
