package scheduler

import (
	"slices"
	"time"
)

// resSet is the residency state a plan is evaluated against: the resident variants
// in least-recently-used order and the budgets. It follows PlanSwap's rules (evict
// the least recently used until the new variant fits), but is cheap to copy, so a
// search can simulate the swaps of a whole plan.
type resSet struct {
	ents      []*Variant // ents[0] is the least recently used
	mem       int64
	memBudget int64
	count     int
}

// newResSet builds the residency state of a snapshot; resident variants the
// snapshot's applications do not know are ignored, as in PlanSwap.
func newResSet(s *Snapshot) resSet {
	type ru struct {
		v    *Variant
		used time.Time
	}
	rs := make([]ru, 0, len(s.Engine.Resident))
	for id, t := range s.Engine.Resident {
		if v := s.Lookup(id); v != nil {
			rs = append(rs, ru{v, t})
		}
	}
	slices.SortFunc(rs, func(a, b ru) int {
		if c := a.used.Compare(b.used); c != 0 {
			return c
		}
		if a.v.ID.String() < b.v.ID.String() {
			return -1
		}
		return 1
	})
	out := resSet{ents: make([]*Variant, 0, len(rs)+1), memBudget: s.Engine.MemBudget, count: s.Engine.CountBudget}
	for _, r := range rs {
		out.ents = append(out.ents, r.v)
		out.mem += r.v.MemBytes
	}
	return out
}

// has reports whether v is resident.
func (rs *resSet) has(v *Variant) bool {
	return slices.Contains(rs.ents, v)
}

// cost returns the time to make v resident (evictions then load; 0 if resident),
// the number of least recently used variants evicted first, and false when v cannot
// fit even in an empty engine.
func (rs *resSet) cost(v *Variant) (c time.Duration, evict int, ok bool) {
	if rs.has(v) {
		return 0, 0, true
	}
	if !fitsAlone(v, rs.memBudget) {
		return 0, 0, false
	}
	mem, n := rs.mem, len(rs.ents)
	for _, e := range rs.ents {
		if (rs.memBudget <= 0 || mem+v.MemBytes <= rs.memBudget) && (rs.count <= 0 || n+1 <= rs.count) {
			break
		}
		c += e.Unload
		mem -= e.MemBytes
		n--
		evict++
	}
	return c + v.Load, evict, true
}

// use writes into dst the state after running v (made resident if needed, then
// most recently used) and returns the swap cost; dst's slice is reused. ok is
// false when v cannot fit.
func (rs *resSet) use(dst *resSet, v *Variant) (time.Duration, bool) {
	c, evict, ok := rs.cost(v)
	if !ok {
		return 0, false
	}
	ents := dst.ents[:0]
	mem := int64(0)
	for _, e := range rs.ents[evict:] {
		if e != v {
			ents = append(ents, e)
			mem += e.MemBytes
		}
	}
	ents = append(ents, v)
	*dst = resSet{ents: ents, mem: mem + v.MemBytes, memBudget: rs.memBudget, count: rs.count}
	return c, true
}

// set makes rs a copy of src without sharing its slice.
func (rs *resSet) set(src *resSet) {
	ents := append(rs.ents[:0], src.ents...)
	*rs = *src
	rs.ents = ents
}
