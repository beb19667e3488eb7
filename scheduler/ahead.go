package scheduler

import (
	"cmp"
	"slices"
	"time"
)

// This file lets a searching policy run its plan's later batches without
// planning again (Options.PlanAhead).
//
// A decision plans the window (up to Options.Window requests) as a sequence of
// runs and sends only the first run's first batch to the engine; the next
// decision reads the whole queue again (the prepass) and searches again. Where
// a batch costs the engine tens of microseconds, as satellite's models do, the
// decision costs more than the batch it makes, and the loop, not the engine,
// bounds the throughput (docs/evaluation.md, "With each policy's decision time
// charged"). With PlanAhead n the decision keeps up to n batches of the rest
// of its plan (the first run past the batch it ran, then the later runs, each
// cut at the batch cap, in the plan's order), and the next decisions take them
// one at a time, as long as each still holds at the decision's Now:
//
//   - its application is the version planned for, and its variant is resident
//     or can be made resident (the swap as the batch's decision would plan it:
//     PlanSwap's rules, its time counted before the batch's);
//   - every one of its requests is still queued (the same *Request, at its Seq:
//     not answered, batched or prepared again since) and not back from a
//     first pass, and is on time if the batch starts now (its deadline at or
//     after Now plus the swap and the batch's latency), so that the batch's
//     believed value is its members' on-time utility, as planned;
//   - no request that arrived since the plan has a deadline before the kept
//     batches would all have ended, run back to back from Now: a newcomer the
//     plan did not see and that is due within it makes the policy plan again.
//
// The first kept batch that fails these drops the whole plan, and that
// decision plans afresh. A decision that takes a kept batch answers nothing
// (its verdicts, expiries and degraded answers wait for the next full
// decision, at most n batches later) and sets no new price gate (the last one
// holds). Resync, a new estimate rule (applications or resident-able variants
// changed) and every full decision forget what was kept. A policy with a peek
// (first passes come back to the queue) or the bruteforce reference keeps
// nothing.

// aheadBatch is a batch of the latest plan that a following decision may run
// without planning again: its requests, in order, on v of app, and their
// believed utility on time.
type aheadBatch struct {
	app     *App
	v       *Variant
	reqs    []*Request
	utility float64
}

// keepAhead keeps the batches of the plan after the one its decision made from
// runs[0]'s first members: the rest of runs[0], then the later runs, cut at
// the cap, up to Options.PlanAhead of them.
func (p *searching) keepAhead(d *decisionState, runs []run) {
	p.dropAhead()
	n := p.o.PlanAhead
	if n <= 0 || len(p.peek) > 0 || p.brute {
		return
	}
	add := func(r run, ms []*member) {
		c := d.capOf(r.v)
		for i := 0; i < len(ms) && len(p.ahead) < n; i += c {
			ab := aheadBatch{app: d.s.Apps[r.v.ID.App], v: r.v}
			for _, m := range ms[i:min(i+c, len(ms))] {
				ab.reqs = append(ab.reqs, m.r)
				ab.utility += m.u[r.vi]
			}
			p.ahead = append(p.ahead, ab)
		}
	}
	// assemble took runs[0]'s members up to the cap, answering some of them
	// with verdicts; the rest of the run comes after.
	if c := d.capOf(runs[0].v); len(runs[0].ms) > c {
		add(runs[0], runs[0].ms[c:])
	}
	for _, r := range runs[1:] {
		add(r, r.ms)
	}
	p.aheadPlanned = len(p.ahead) > 0
}

// dropAhead forgets the kept batches.
func (p *searching) dropAhead() {
	clear(p.ahead)
	p.ahead = p.ahead[:0]
}

// takeAhead returns the next kept batch when it still holds at s.Now (see
// above); otherwise it forgets every kept batch and returns nil.
func (p *searching) takeAhead(s *Snapshot) *Batch {
	if len(p.ahead) == 0 {
		return nil
	}
	ab := p.ahead[0]
	b := &Batch{Variant: ab.v, Requests: ab.reqs, Start: s.Now, Utility: ab.utility, Kept: true}
	ok := s.Apps[ab.app.Name] == ab.app
	var swap time.Duration
	if _, resident := s.Engine.Resident[ab.v.ID]; ok && !resident {
		// The swap as assemble plans it (PlanSwap's rules).
		rs := newResSet(s)
		var evict int
		if swap, evict, ok = rs.cost(ab.v); ok {
			for _, e := range rs.ents[:evict] {
				b.Evict = append(b.Evict, e.ID)
			}
			b.Load = []VariantID{ab.v.ID}
		}
	}
	fin := s.Now.Add(swap + ab.v.LatencyAt(len(ab.reqs)))
	b.Finish = fin
	for _, r := range ab.reqs {
		if !ok {
			break
		}
		i, found := slices.BinarySearchFunc(s.Queue, r.Seq, func(x *Request, seq uint64) int { return cmp.Compare(x.Seq, seq) })
		ok = found && s.Queue[i] == r && r.First == nil && !fin.After(r.Deadline)
	}
	if ok {
		end := fin
		for _, a := range p.ahead[1:] {
			end = end.Add(a.v.LatencyAt(len(a.reqs)))
		}
		for i := len(s.Queue) - 1; i >= 0 && s.Queue[i].Seq >= p.aheadNext; i-- {
			if s.Queue[i].Deadline.Before(end) {
				ok = false
				break
			}
		}
	}
	if !ok {
		p.aheadDropped++
		p.dropAhead()
		return nil
	}
	p.ahead[0] = aheadBatch{}
	p.ahead = p.ahead[1:]
	p.aheadTaken++
	return b
}
