package scheduler

import "time"

func init() { Register("fixed-batch", newFixedBatch) }

// fixedBatch is what a Triton-style server does: one variant per application
// (FixedVariant, else the most accurate), a dynamic batcher per application that
// runs a batch as soon as MaxBatch requests wait or the oldest has waited
// MaxQueueDelay, and no notion of deadlines beyond expiring requests past their
// hard stop. Among ready applications the one with the oldest request goes first;
// when none is ready it asks to be woken when the first delay runs out.
type fixedBatch struct {
	o Options
}

func newFixedBatch(o Options) (Policy, error) { return &fixedBatch{o: o}, nil }

func (p *fixedBatch) Name() string { return "fixed-batch" }

func (p *fixedBatch) Decide(s *Snapshot) Decision {
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
			v, err := fixedVariant(r.App, p.o)
			if err != nil {
				v = r.App.Variants[r.App.DefaultVariant]
			}
			aq = &appQ{v: v, cap: max(1, min(p.o.MaxBatch, v.MaxBatch())), oldest: r.Arrival}
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
		for _, r := range q {
			if r.App == pick {
				d.Verdicts = append(d.Verdicts, Verdict{Request: r, Outcome: Expired, Reason: ReasonNoVariantFits})
			}
		}
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
