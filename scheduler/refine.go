package scheduler

import "slices"

// refineMax is the largest window refine works on: it costs O(members^2 x runs x
// variants) plan evaluations per pass.
const refineMax = 12

// refine improves a grouped plan on a small window member by member. The grouped
// search keeps every (application, class) group together on one variant; when
// members of one group want different variants (one due soon, one not), moving a
// single member to another run, or into a run of its own on any variant before or
// after the others, can raise the plan's value. First improvement, a few passes.
// The runs are fresh slices (plan's output) and may be rebuilt.
func (d *decisionState) refine(runs []run) []run {
	n := 0
	for _, r := range runs {
		n += len(r.ms)
	}
	if n < 2 || n > refineMax {
		return runs
	}
	var ra, rb resSet
	best := d.evalRuns(runs, &ra, &rb)
	try := func(cand []run) bool {
		if v := d.evalRuns(cand, &ra, &rb); v > best+1e-12 {
			best = v
			return true
		}
		return false
	}
	for range 3 {
		better := false
	scan:
		for ri := 0; ri < len(runs); ri++ {
			for k := 0; k < len(runs[ri].ms); k++ {
				m := runs[ri].ms[k]
				// Candidate plans without m at (ri, k).
				base := cloneRuns(runs)
				base[ri].ms = slices.Delete(base[ri].ms, k, k+1)
				if len(base[ri].ms) == 0 {
					base = slices.Delete(base, ri, ri+1)
				}
				var found []run
				// Into another existing run of the same application (by deadline).
				for rj := range base {
					if base[rj].v.ID.App != m.r.App.Name || (rj == ri && len(base) == len(runs)) {
						continue
					}
					c := cloneRuns(base)
					c[rj].ms = insertByDeadline(c[rj].ms, m)
					if len(c[rj].ms) <= d.capOf(c[rj].v) && try(c) {
						found = c
					}
				}
				// Into a run of its own, first or last, on any variant.
				ai := d.info(m.r.App)
				for vi, ok := range ai.ok0 {
					if !ok {
						continue
					}
					single := run{ms: []*member{m}, vi: vi, v: m.r.App.Variants[vi]}
					if c := append([]run{single}, cloneRuns(base)...); try(c) {
						found = c
					}
					if c := append(cloneRuns(base), single); try(c) {
						found = c
					}
				}
				if found != nil {
					runs, better = found, true
					break scan // rescan the new plan
				}
			}
		}
		if !better {
			break
		}
	}
	return runs
}

func cloneRuns(rs []run) []run {
	out := make([]run, len(rs))
	for i, r := range rs {
		out[i] = run{ms: slices.Clone(r.ms), vi: r.vi, v: r.v}
	}
	return out
}

func insertByDeadline(ms []*member, m *member) []*member {
	i := 0
	for i < len(ms) && ms[i].dl <= m.dl {
		i++
	}
	return slices.Insert(ms, i, m)
}
