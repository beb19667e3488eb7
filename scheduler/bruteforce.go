package scheduler

import (
	"math"
	"math/bits"
	"time"
)

// bruteNoCut turns bruteforce's branch and bound cuts off (tests).
var bruteNoCut bool

// bruteforce returns the optimal plan for the window under the decision's value
// model: every ordered partition of the window into single-application batches of
// at most the variant's cap, every variant per batch, with the same residency
// simulation and alternatives as the grouped search. It is exponential and meant
// for windows of at most MaxBruteWindow requests (the policy enforces it).
func (d *decisionState) bruteforce(win []int) []run {
	n := len(win)
	if n == 0 {
		return nil
	}
	ms := make([]*member, n)
	// ub[i] bounds what member i adds to a plan: on any variant v, its value
	// (at most the larger of its on-time utility and its alternative) less
	// the price of v's amortised time, which runValue charges every member of
	// a run; with a margin for rounding, so that a branch is cut only when
	// no plan in it can be strictly better than the best found (the plan
	// found is then the first best in the search's order, as without cuts:
	// TestBruteForceCutsChangeNothing). Without the price the bound was
	// loose whenever engine time has one, and little was cut.
	ub := make([]float64, n)
	for i, wi := range win {
		m := &d.members[wi]
		ms[i] = m
		ub[i] = math.Inf(-1)
		ai := d.info(m.r.App)
		for vi, u := range m.u {
			if ai.ok0[vi] {
				ub[i] = max(ub[i], max(u, m.alt)-d.price*ai.amort[vi])
			}
		}
		ub[i] += 1e-9 * (1 + math.Abs(ub[i]))
	}
	full := 1<<n - 1
	apps := make([]*App, full+1)
	ubm := make([]float64, full+1)
	for mask := 1; mask <= full; mask++ {
		low := bits.TrailingZeros(uint(mask))
		rest := mask &^ (1 << low)
		ubm[mask] = ub[low] + ubm[rest]
		switch {
		case rest == 0:
			apps[mask] = ms[low].r.App
		case apps[rest] == ms[low].r.App:
			apps[mask] = apps[rest]
		}
	}
	type step struct{ mask, vi int }
	var (
		path, best []step
		bestVal    = math.Inf(-1)
		res        = make([]resSet, n+1)
		scr        = make([][]*member, n)
	)
	d.copyRes(&res[0])
	var rec func(rem, depth int, t time.Duration, closed float64)
	rec = func(rem, depth int, t time.Duration, closed float64) {
		if rem == 0 {
			if closed > bestVal {
				bestVal, best = closed, append(best[:0], path...)
			}
			return
		}
		if closed+ubm[rem] <= bestVal && !bruteNoCut {
			return
		}
		for sub := rem; sub > 0; sub = (sub - 1) & rem {
			a := apps[sub]
			if a == nil {
				continue
			}
			list := scr[depth][:0]
			for x := sub; x > 0; x &= x - 1 {
				list = append(list, ms[bits.TrailingZeros(uint(x))])
			}
			scr[depth] = list
			ai := d.info(a)
			for vi, v := range a.Variants {
				if !ai.ok0[vi] || len(list) > d.capOf(v) {
					continue
				}
				c, ok := res[depth].use(&res[depth+1], v)
				if !ok {
					continue
				}
				val, end := d.runValue(list, vi, v, t+c)
				path = append(path, step{sub, vi})
				rec(rem&^sub, depth+1, end, closed+val)
				path = path[:len(path)-1]
			}
		}
	}
	rec(full, 0, 0, 0)
	runs := make([]run, 0, len(best))
	for _, st := range best {
		var rm []*member
		for x := st.mask; x > 0; x &= x - 1 {
			rm = append(rm, ms[bits.TrailingZeros(uint(x))])
		}
		a := apps[st.mask]
		runs = append(runs, run{ms: rm, vi: st.vi, v: a.Variants[st.vi]})
	}
	return runs
}
