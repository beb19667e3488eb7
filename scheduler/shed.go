package scheduler

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// ReasonOverload: the queue holds more work than the engine can finish by the
// deadlines, even on the cheapest variants; this request was the one whose model
// answer was worth least per second of engine time, so it is answered now (with
// the estimate, or expired) to keep the others on time.
const ReasonOverload = "overload_shed"

// shed is overload control for the searching policies. Without it, a queue that
// grows faster than the engine drains it is served in priority (roughly deadline)
// order, so every request is served a little late and deadline-met collapses to
// near zero while a third of the requests still end degraded or expired (the
// "domino effect" of EDF under overload). Instead, shed walks the members in
// deadline order, accumulating each one's engine time on its cheapest variant
// (amortised at its best batch). Whenever a member that could still be on time
// would finish after its deadline, it removes from the walked prefix the member
// whose model answer is worth least per second of engine time over its
// alternative, until the member fits (a weighted Moore-Hodgson rule). Removed
// members are answered now: degraded when the policy may use the estimate,
// expired otherwise.
//
// A member's worth is its best on-time believed utility (its late value when it is
// already past the deadline) minus its alternative: the degraded answer's expected
// utility for a data-aware policy when that beats no answer, otherwise the value
// of no answer (the application's no_answer_utility, 0 by default). A data-aware
// policy therefore sheds the requests its estimate is surest about and keeps
// engine time for the ones where a model answer changes the most (with a negative
// no-answer value for a class, a likely member of it is expensive to shed); an
// oblivious one, which believes every request is worth the same, sheds the latest
// deadlines' requests.
//
// It costs O(n log n) for the sort and the heap; its buffers (shedScratch) are
// kept between decisions.
func (d *decisionState) shed() {
	n := len(d.members)
	if n < 2 {
		return
	}
	sc := d.shedBuf
	if sc == nil {
		sc = &shedScratch{}
	}
	cs := slices.Grow(sc.cs[:0], n)[:n]
	order := slices.Grow(sc.order[:0], n)[:n]
	for i := range d.members {
		m := &d.members[i]
		ai := d.info(m.r.App)
		best := math.Inf(-1)
		for vi, ok := range ai.ok0 {
			if !ok {
				continue
			}
			v := m.u[vi]
			if m.dl < ai.fastest {
				v = m.late(vi, ai.lat1[vi])
			}
			best = max(best, v)
		}
		alt := m.na
		if d.shedDegrades(m) {
			alt = m.r.DegradedUtility
		}
		cs[i] = shedCand{cost: ai.shedCost, density: shedDensity(best, alt, ai.shedCost)}
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(d.members[a].dl, d.members[b].dl) })
	// A min-heap of member indexes by worth per engine second, the later in the
	// queue first on ties.
	h := lessHeap[int]{h: sc.heap[:0], less: func(a, b int) bool {
		if x, y := cs[a].density, cs[b].density; x != y {
			return x < y
		}
		return a > b
	}}
	var cum time.Duration
	shed := sc.shed[:0]
	for _, i := range order {
		m := &d.members[i]
		cum += cs[i].cost
		h.push(i)
		if m.dl < d.info(m.r.App).fastest {
			continue // already late: allowed, but its time counts for those behind it
		}
		for cum > m.dl && h.len() > 0 {
			j := h.pop()
			cum -= cs[j].cost
			shed = append(shed, j)
			if j == i {
				break
			}
		}
	}
	sc.cs, sc.order, sc.heap, sc.shed = cs, order, h.h, shed
	d.shedBuf = sc
	if len(shed) == 0 {
		return
	}
	for _, j := range shed {
		if d.shedN == 0 || cs[j].density > d.shedMax {
			d.shedMax = cs[j].density
		}
		d.shedN++
	}
	drop := slices.Grow(sc.drop[:0], n)[:n]
	clear(drop)
	sc.drop = drop
	for _, j := range shed {
		drop[j] = true
		r := d.members[j].r
		if d.shedDegrades(&d.members[j]) {
			d.verdicts = append(d.verdicts, Verdict{Request: r, Outcome: Degraded, Reason: ReasonOverload})
		} else {
			d.verdicts = append(d.verdicts, Verdict{Request: r, Outcome: Expired, Reason: ReasonOverload})
		}
	}
	k := 0
	for i := range d.members {
		if !drop[i] {
			d.members[k] = d.members[i]
			k++
		}
	}
	clear(d.members[k:])
	d.members = d.members[:k]
}

// shedDensity is a member's worth per second of engine time in the shedding
// walk: its best believed value on a model over its alternative, per the
// engine time the walk charges it.
func shedDensity(best, alt float64, cost time.Duration) float64 {
	return (best - alt) / cost.Seconds()
}

// shedScratch holds shed's buffers between decisions.
type shedScratch struct {
	cs                []shedCand
	order, heap, shed []int
	drop              []bool
}

type shedCand struct {
	cost    time.Duration
	density float64
}

// shedDegrades reports whether a shed member is answered degraded (its estimate
// is allowed and worth more than no answer) rather than expired.
func (d *decisionState) shedDegrades(m *member) bool {
	return d.w.degrade(m.r) && m.r.DegradedUtility > m.na
}

// shedHeadroom inflates the amortised cost in the walk: real batches are not
// always full, latencies vary, and the plan is not exactly deadline order.
const shedHeadroom = 1.25
