package scheduler

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// run is one step of a plan: members run back to back on one variant (in chunks of
// the variant's batch cap), after the swap that makes it resident.
type run struct {
	ms []*member
	vi int
	v  *Variant
}

// evalRuns is the believed value of a plan: the runs in order, from Now, with the
// swaps the residency simulation asks for. It is -Inf when a variant cannot fit.
func (d *decisionState) evalRuns(runs []run, a, b *resSet) float64 {
	d.copyRes(a)
	t, total := time.Duration(0), 0.0
	for _, r := range runs {
		c, ok := a.use(b, r.v)
		if !ok {
			return math.Inf(-1)
		}
		a, b = b, a
		var val float64
		val, t = d.runValue(r.ms, r.vi, r.v, t+c)
		total += val
	}
	return total
}

// copyRes copies the decision's starting residency into dst, reusing its slice.
func (d *decisionState) copyRes(dst *resSet) { dst.set(&d.res0) }

// group is the requests of the window that share a grouping key: one application
// and, for a data-aware policy, one predicted class.
type group struct {
	app   *App
	class int
	// ms are the members, earliest deadline first.
	ms []*member
	// vars are the variants that can be made resident at all.
	vars []int
	// ub bounds the group's value from above (every member on time on its best
	// variant, or its alternative).
	ub float64
	// edl is the earliest deadline (relative to Now).
	edl time.Duration
}

// groupWindow groups the window's members by key, in order of first appearance
// (the window is sorted by priority, so the groups are too).
func (d *decisionState) groupWindow(win []int) []*group {
	var gs []*group
	for _, i := range win {
		m := &d.members[i]
		var g *group
		for _, x := range gs {
			if x.app == m.r.App && x.class == m.class {
				g = x
				break
			}
		}
		if g == nil {
			g = &group{app: m.r.App, class: m.class, edl: m.dl}
			ai := d.info(m.r.App)
			for vi, ok := range ai.ok0 {
				if ok {
					g.vars = append(g.vars, vi)
				}
			}
			gs = append(gs, g)
		}
		g.ms = append(g.ms, m)
		g.edl = min(g.edl, m.dl)
		best := m.alt
		for _, vi := range g.vars {
			best = max(best, m.u[vi])
		}
		g.ub += best
	}
	for _, g := range gs {
		slices.SortStableFunc(g.ms, func(a, b *member) int {
			if a.dl != b.dl {
				return cmp.Compare(a.dl, b.dl)
			}
			return cmp.Compare(a.r.Seq, b.r.Seq)
		})
	}
	return gs
}

// grouped searches group orders and one variant per group. Consecutive groups on
// the same variant fuse into one run (one swap, one batch).
type grouped struct {
	d      *decisionState
	gs     []*group
	scr    []*member // scratch for fused runs
	runs   []run
	ra, rb resSet
	evals  int
}

func newGrouped(d *decisionState, gs []*group) *grouped {
	n := 0
	for _, g := range gs {
		n += len(g.ms)
	}
	return &grouped{d: d, gs: gs, scr: make([]*member, 0, n+d.maxBatch), runs: make([]run, 0, len(gs))}
}

// toRuns fuses a plan (group order, variant per position) into runs.
func (p *grouped) toRuns(order, vars []int) []run {
	p.scr = p.scr[:0]
	p.runs = p.runs[:0]
	for i := 0; i < len(order); {
		g := p.gs[order[i]]
		vi := vars[i]
		start := len(p.scr)
		j := i
		for ; j < len(order) && p.gs[order[j]].app == g.app && vars[j] == vi; j++ {
			p.scr = append(p.scr, p.gs[order[j]].ms...)
		}
		p.runs = append(p.runs, run{ms: p.scr[start:len(p.scr):len(p.scr)], vi: vi, v: g.app.Variants[vi]})
		i = j
	}
	return p.runs
}

// eval is evalRuns(toRuns(order, vars)) without building the runs.
func (p *grouped) eval(order, vars []int) float64 {
	p.evals++
	d := p.d
	a, b := &p.ra, &p.rb
	d.copyRes(a)
	t, total := time.Duration(0), 0.0
	for i := 0; i < len(order); {
		g := p.gs[order[i]]
		vi := vars[i]
		v := g.app.Variants[vi]
		j := i + 1
		for j < len(order) && p.gs[order[j]].app == g.app && vars[j] == vi {
			j++
		}
		c, ok := a.use(b, v)
		if !ok {
			return math.Inf(-1)
		}
		a, b = b, a
		var val float64
		val, t = p.runValue(order[i:j], vi, v, t+c)
		total += val
		i = j
	}
	return total
}

// runValue is decisionState.runValue over the concatenated members of the
// groups idx, without concatenating them.
func (p *grouped) runValue(idx []int, vi int, v *Variant, t time.Duration) (float64, time.Duration) {
	d := p.d
	c := d.capOf(v)
	n := 0
	for _, gi := range idx {
		n += len(p.gs[gi].ms)
	}
	val, k := 0.0, 0
	for _, gi := range idx {
		for _, m := range p.gs[gi].ms {
			if k%c == 0 {
				t += v.LatencyAt(min(c, n-k))
			}
			val += m.value(vi, t)
			k++
		}
	}
	if d.price > 0 && n > 0 {
		val -= d.price * float64(n) * d.info(p.gs[idx[0]].app).amort[vi]
	}
	return val, t
}

// plan is a group order and a variant per position, with its value.
type plan struct {
	order, vars []int
	value       float64
}

// search returns the best plan found: exhaustive when there are at most exhaustive
// groups, otherwise greedy construction from two seed orders followed by local
// improvement. Either way its cost is bounded by the window, not the queue.
func (p *grouped) search(exhaustive int) plan {
	if len(p.gs) == 0 {
		return plan{value: math.Inf(-1)}
	}
	if len(p.gs) <= exhaustive {
		return p.exhaustive()
	}
	return p.greedy()
}

// exhaustive is a depth-first branch and bound over every group order and variant.
type dfsState struct {
	p     *grouped
	order []int
	vars  []int
	used  []bool
	res   []resSet // res[depth]: residency before position depth's run
	best  plan
	ubAll float64
	// members is the number of requests in the groups.
	members int
}

func (p *grouped) exhaustive() plan {
	n := len(p.gs)
	st := &dfsState{p: p, order: make([]int, n), vars: make([]int, n), used: make([]bool, n),
		res: make([]resSet, n+1), best: plan{value: math.Inf(-1)}}
	for _, g := range p.gs {
		st.ubAll += g.ub
		st.members += len(g.ms)
	}
	p.d.copyRes(&st.res[0])
	st.dfs(0, 0, 0, 0, 0, nil)
	return st.best
}

// dfs places position depth. The open run is positions [runStart, depth) on
// variant rv, its compute starting at t; closed is the value of the runs before
// it and ubClosed their groups' upper bound.
func (st *dfsState) dfs(depth, runStart int, t time.Duration, closed, ubClosed float64, rv *Variant) {
	p := st.p
	n := len(p.gs)
	if closed+st.ubAll-ubClosed <= st.best.value {
		return
	}
	if depth == n {
		val, _ := st.closeRun(runStart, depth, t)
		if v := closed + val; v > st.best.value {
			st.best = plan{order: slices.Clone(st.order), vars: slices.Clone(st.vars), value: v}
		}
		return
	}
	for gi, g := range p.gs {
		if st.used[gi] {
			continue
		}
		st.used[gi] = true
		st.order[depth] = gi
		for _, vi := range g.vars {
			v := g.app.Variants[vi]
			st.vars[depth] = vi
			p.evals++
			if depth > runStart && v == rv {
				// Fuse with the open run; residency is unchanged.
				st.res[depth+1].set(&st.res[depth])
				st.dfs(depth+1, runStart, t, closed, ubClosed, rv)
				continue
			}
			c2, ub2, t2 := closed, ubClosed, t
			if depth > runStart {
				val, end := st.closeRun(runStart, depth, t)
				c2 += val
				t2 = end
				for _, gj := range st.order[runStart:depth] {
					ub2 += p.gs[gj].ub
				}
			}
			next := &st.res[depth+1]
			c, ok := st.res[depth].use(next, v)
			if !ok {
				continue
			}
			st.dfs(depth+1, depth, t2+c, c2, ub2, v)
		}
		st.used[gi] = false
	}
}

// closeRun values the open run [a, b) whose compute starts at t.
func (st *dfsState) closeRun(a, b int, t time.Duration) (float64, time.Duration) {
	p := st.p
	if a == b {
		return 0, t
	}
	g := p.gs[st.order[a]]
	vi := st.vars[a]
	return p.runValue(st.order[a:b], vi, g.app.Variants[vi], t)
}

// greedy builds a plan for many groups: for each of two seed orders (earliest
// deadline first, and priority), place the groups in order choosing for each the
// variant that maximises the whole plan's value (later groups on their fastest
// variant); then improve by changing one variant or swapping two adjacent groups
// while that helps, for a bounded number of passes.
func (p *grouped) greedy() plan {
	n := len(p.gs)
	fast := make([]int, n)
	for gi, g := range p.gs {
		best := time.Duration(math.MaxInt64)
		for _, vi := range g.vars {
			v := g.app.Variants[vi]
			c, _, _ := p.d.res0.cost(v)
			if l := c + v.LatencyAt(len(g.ms)); l < best {
				best, fast[gi] = l, vi
			}
		}
	}
	byPri := make([]int, n)
	for i := range byPri {
		byPri[i] = i
	}
	byDl := slices.Clone(byPri)
	slices.SortStableFunc(byDl, func(a, b int) int { return cmp.Compare(p.gs[a].edl, p.gs[b].edl) })

	best := plan{value: math.Inf(-1)}
	for _, seed := range [][]int{byDl, byPri} {
		order := slices.Clone(seed)
		vars := make([]int, n)
		for k, gi := range order {
			vars[k] = fast[gi]
		}
		val := p.eval(order, vars)
		for k, gi := range order {
			for _, vi := range p.gs[gi].vars {
				if vi == vars[k] {
					continue
				}
				old := vars[k]
				vars[k] = vi
				if v := p.eval(order, vars); v > val {
					val = v
				} else {
					vars[k] = old
				}
			}
		}
		val = p.improve(order, vars, val, 2)
		if val > best.value {
			best = plan{order: order, vars: vars, value: val}
		}
	}
	return best
}

// improve is a first-improvement local search: change one position's variant, or
// swap two adjacent positions.
func (p *grouped) improve(order, vars []int, val float64, passes int) float64 {
	for range passes {
		better := false
		for k := range order {
			for _, vi := range p.gs[order[k]].vars {
				if vi == vars[k] {
					continue
				}
				old := vars[k]
				vars[k] = vi
				if v := p.eval(order, vars); v > val+1e-12 {
					val, better = v, true
				} else {
					vars[k] = old
				}
			}
			if k+1 < len(order) {
				order[k], order[k+1] = order[k+1], order[k]
				vars[k], vars[k+1] = vars[k+1], vars[k]
				if v := p.eval(order, vars); v > val+1e-12 {
					val, better = v, true
				} else {
					order[k], order[k+1] = order[k+1], order[k]
					vars[k], vars[k+1] = vars[k+1], vars[k]
				}
			}
		}
		if !better {
			break
		}
	}
	return val
}
