package scheduler

import (
	"sort"
	"time"
)

// Lookup returns the variant with the given ID, or nil.
func (s *Snapshot) Lookup(id VariantID) *Variant {
	a := s.Apps[id.App]
	if a == nil {
		return nil
	}
	for _, v := range a.Variants {
		if v.ID.Variant == id.Variant {
			return v
		}
	}
	return nil
}

// Swap is the residency change that makes a variant resident.
type Swap struct {
	Evict, Load []VariantID
	// Cost is the predicted time of the evictions and the load.
	Cost time.Duration
}

// PlanSwap plans making v resident under the engine's budgets: nothing when it is
// resident already; otherwise load it, first evicting least recently used variants
// until it fits. ok is false when v cannot fit even in an empty engine.
func PlanSwap(s *Snapshot, v *Variant) (sw Swap, ok bool) {
	e := &s.Engine
	if _, res := e.Resident[v.ID]; res {
		return Swap{}, true
	}
	if e.MemBudget > 0 && v.MemBytes > e.MemBudget {
		return Swap{}, false
	}
	var used int64
	type lru struct {
		id   VariantID
		used time.Time
		v    *Variant
	}
	res := make([]lru, 0, len(e.Resident))
	for id, t := range e.Resident {
		rv := s.Lookup(id)
		if rv == nil {
			continue
		}
		used += rv.MemBytes
		res = append(res, lru{id, t, rv})
	}
	sort.Slice(res, func(i, j int) bool {
		if !res[i].used.Equal(res[j].used) {
			return res[i].used.Before(res[j].used)
		}
		return res[i].id.String() < res[j].id.String()
	})
	count := len(res)
	for _, r := range res {
		memOK := e.MemBudget <= 0 || used+v.MemBytes <= e.MemBudget
		countOK := e.CountBudget <= 0 || count+1 <= e.CountBudget
		if memOK && countOK {
			break
		}
		sw.Evict = append(sw.Evict, r.id)
		sw.Cost += r.v.Unload
		used -= r.v.MemBytes
		count--
	}
	sw.Load = []VariantID{v.ID}
	sw.Cost += v.Load
	return sw, true
}

// SwapCost is the predicted cost of making v resident (0 when it is), and false when
// it cannot be made resident at all.
func SwapCost(s *Snapshot, v *Variant) (time.Duration, bool) {
	sw, ok := PlanSwap(s, v)
	return sw.Cost, ok
}
