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
}

func newEDF(o Options) (Policy, error) {
	return &edf{o: o, byAccuracy: map[*App][]*Variant{}}, nil
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

func (p *edf) Decide(s *Snapshot) Decision {
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
		var fallback *Batch
		for _, v := range p.ranked(head.App) {
			sw, ok := PlanSwap(s, v)
			if !ok {
				continue
			}
			n := min(len(cands), v.MaxBatch())
			if b := largestFitting(v, n, head.Deadline.Sub(s.Now)-sw.Cost); b > 0 {
				d.Batch = newBatch(s, v, sw, cands[:b])
				return d
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
			return d
		}
	}
	return d
}
