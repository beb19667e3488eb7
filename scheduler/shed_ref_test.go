package scheduler

import (
	"cmp"
	"container/heap"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"
)

// TestShedMatchesReference: shed with its kept buffers and typed heap answers
// the same requests, in the same order, as the walk it replaced (below, as it
// was: buffers allocated per decision, container/heap), on randomised queues.
func TestShedMatchesReference(t *testing.T) {
	apps := indexApps()
	var sc shedScratch
	shed := 0
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 5))
		now := t0
		var q []*Request
		for i := range rng.IntN(400) {
			a := apps[rng.IntN(2)]
			x := rng.Float64()
			q = append(q, req(a, uint64(i), now.Add(-ms(rng.Float64()*5)), ms(0.5+rng.Float64()*60), []float64{1 - x, x}))
		}
		s := &Snapshot{Now: now, Queue: q, Apps: map[string]*App{apps[0].Name: apps[0], apps[1].Name: apps[1]},
			Engine: Engine{Resident: map[VariantID]time.Time{apps[0].Variants[0].ID: now}, CountBudget: 2}}
		w := view{dataAware: true, byClass: true, noDegrade: seed%3 == 0}
		run := func(f func(d *decisionState)) ([]Verdict, []*Request) {
			d := newDecisionState(s, w, 8)
			d.shedBuf = &sc
			d.prepass(nil)
			f(d)
			var kept []*Request
			for _, m := range d.members {
				kept = append(kept, m.r)
			}
			return d.verdicts, kept
		}
		gv, gk := run((*decisionState).shed)
		wv, wk := run(shedReference)
		if !reflect.DeepEqual(gv, wv) || !slices.Equal(gk, wk) {
			t.Fatalf("seed %d: shed answered %d and kept %d, the reference %d and %d", seed, len(gv), len(gk), len(wv), len(wk))
		}
		shed += len(gv)
	}
	if shed < 1000 {
		t.Errorf("only %d answered in all: the queues are not overloaded enough to test shedding", shed)
	}
}

func shedReference(d *decisionState) {
	n := len(d.members)
	if n < 2 {
		return
	}
	type cand struct {
		i       int
		cost    time.Duration
		density float64
	}
	cs := make([]cand, n)
	order := make([]int, n)
	for i := range d.members {
		m := &d.members[i]
		ai := d.info(m.r.App)
		cost := time.Duration(-1)
		best := math.Inf(-1)
		for vi, ok := range ai.ok0 {
			if !ok {
				continue
			}
			c := time.Duration(ai.amort[vi] * float64(time.Second))
			if cost < 0 || c < cost {
				cost = c
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
		cost = time.Duration(float64(cost) * shedHeadroom)
		cs[i] = cand{i: i, cost: max(cost, 1), density: (best - alt) / max(cost.Seconds(), 1e-12)}
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(d.members[a].dl, d.members[b].dl) })
	h := &refDensityHeap{cs: make([]int, 0, n), density: func(i int) float64 { return cs[i].density }}
	var cum time.Duration
	var shed []int
	for _, i := range order {
		m := &d.members[i]
		cum += cs[i].cost
		heap.Push(h, i)
		if m.dl < d.info(m.r.App).fastest {
			continue // already late: allowed, but its time counts for those behind it
		}
		for cum > m.dl && h.Len() > 0 {
			j := heap.Pop(h).(int)
			cum -= cs[j].cost
			shed = append(shed, j)
			if j == i {
				break
			}
		}
	}
	if len(shed) == 0 {
		return
	}
	drop := make([]bool, n)
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

// refDensityHeap is a min-heap of member indexes by worth per engine second.
type refDensityHeap struct {
	cs      []int
	density func(int) float64
}

func (h *refDensityHeap) Len() int { return len(h.cs) }
func (h *refDensityHeap) Less(i, j int) bool {
	a, b := h.density(h.cs[i]), h.density(h.cs[j])
	if a != b {
		return a < b
	}
	return h.cs[i] > h.cs[j] // later in the queue goes first
}
func (h *refDensityHeap) Swap(i, j int) { h.cs[i], h.cs[j] = h.cs[j], h.cs[i] }
func (h *refDensityHeap) Push(x any)    { h.cs = append(h.cs, x.(int)) }
func (h *refDensityHeap) Pop() any {
	x := h.cs[len(h.cs)-1]
	h.cs = h.cs[:len(h.cs)-1]
	return x
}
