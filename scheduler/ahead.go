package scheduler

import (
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
//     first pass; one that the batch would now finish late (after the swap
//     and the batch) is valued and kept or answered as assemble does for a
//     decision's own batch: kept at its penalised value, or answered
//     (degraded, or expired) when its alternative is worth more, and the
//     batch runs without it; a batch left empty drops the plan;
//   - no request that arrived since the plan has a deadline before the kept
//     batches would all have ended, run back to back from Now: a newcomer the
//     plan did not see and that is due within it makes the policy plan again;
//   - the batch the decision before handed out has left the queue: a caller
//     that did not run it after all puts it back (the gateway's pipeline does
//     when the running batch fails), and it was planned before the kept ones.
//
// The first kept batch that fails these drops the whole plan, and that
// decision plans afresh. A decision that takes a kept batch answers nothing
// but the batch's own members that are now late and worth more answered, or
// past their hard stop (the queue's other verdicts, expiries and degraded
// answers wait for the next full decision, at most n batches later), and sets
// no new price gate (the last one holds). Resync, a new estimate rule
// (applications or resident-able variants changed), a peek configured
// (ConfigurePeek) and every full decision forget what was kept. A policy with
// a peek (first passes come back to the queue) or the bruteforce reference
// keeps nothing.

// aheadBatch is a batch of the latest plan that a following decision may run
// without planning again: its requests, in order, on v of app, and their
// believed utility on time.
type aheadBatch struct {
	app *App
	v   *Variant
	ms  []aheadMember
}

// aheadMember is what a kept batch needs of a member of the plan to value it
// as assemble does: its utility on the batch's variant, the value of no answer
// and of its alternative, and its budget (for the lateness penalty).
type aheadMember struct {
	r          *Request
	u, na, alt float64
	budget     time.Duration
}

// late is the member's value when its result ends at fin (member.late).
func (m *aheadMember) late(fin time.Time) float64 {
	over := fin.Sub(m.r.Deadline)
	if over <= 0 || m.u <= m.na {
		return m.u
	}
	return m.na + (m.u-m.na)*penaltyLate(over, m.budget)
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
				ab.ms = append(ab.ms, aheadMember{r: m.r, u: m.u[r.vi], na: m.na, alt: m.alt, budget: m.budget})
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
}

// dropAhead forgets the kept batches.
func (p *searching) dropAhead() {
	clear(p.ahead)
	p.ahead = p.ahead[:0]
	p.aheadLast = nil
}

// takeAhead returns the next kept batch when it still holds at s.Now (see
// above), with the verdicts of its members that would now be late and are
// worth more answered otherwise, as assemble gives them; otherwise it forgets
// every kept batch and returns nil.
func (p *searching) takeAhead(s *Snapshot) (*Batch, []Verdict) {
	if len(p.ahead) == 0 {
		return nil, nil
	}
	ab := p.ahead[0]
	b := &Batch{Variant: ab.v, Start: s.Now, Kept: true}
	ok := s.Apps[ab.app.Name] == ab.app
	// The batch the last decision made must have left the queue: one that
	// stays or comes back (the caller did not run it after all: the gateway's
	// pipeline puts a decided batch back when the running one fails) was
	// planned to run before the kept ones.
	for _, r := range p.aheadLast {
		if !ok {
			break
		}
		ok = !queued(s.Queue, r)
	}
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
	// As assemble: the batch's end with every member, and a member that would
	// be late there and whose alternative is worth more is answered instead.
	fin := s.Now.Add(swap + ab.v.LatencyAt(len(ab.ms)))
	var verdicts []Verdict
	for i := range ab.ms {
		if !ok {
			break
		}
		m := &ab.ms[i]
		if ok = queued(s.Queue, m.r) && m.r.First == nil; !ok {
			break
		}
		if !fin.Before(m.r.HardStop()) {
			// Worth nothing from its hard stop, whatever else it is worth
			// (the prepass expires it from there too).
			verdicts = append(verdicts, Verdict{Request: m.r, Outcome: Expired, Reason: ReasonPastHardStop})
			continue
		}
		lv := m.late(fin)
		if fin.After(m.r.Deadline) && m.alt > lv {
			if p.w.degrade(m.r) && m.r.DegradedUtility > lv && m.r.DegradedUtility >= m.na {
				verdicts = append(verdicts, Verdict{Request: m.r, Outcome: Degraded, Reason: ReasonNoVariantInTime})
			} else {
				verdicts = append(verdicts, Verdict{Request: m.r, Outcome: Expired, Reason: ReasonNotWorth})
			}
			continue
		}
		b.Requests = append(b.Requests, m.r)
		b.Utility += lv
	}
	ok = ok && len(b.Requests) > 0
	if ok {
		b.Finish = s.Now.Add(swap + ab.v.LatencyAt(len(b.Requests)))
		end := b.Finish
		for _, a := range p.ahead[1:] {
			end = end.Add(a.v.LatencyAt(len(a.ms)))
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
		return nil, nil
	}
	p.ahead[0] = aheadBatch{}
	p.ahead = p.ahead[1:]
	p.aheadTaken++
	p.aheadLast = b.Requests
	return b, verdicts
}
