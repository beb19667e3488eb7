package scheduler

import "time"

// Reasons attached to verdicts.
const (
	// ReasonPastHardStop: even the fastest variant would finish after the hard stop.
	ReasonPastHardStop = "past_hard_stop"
	// ReasonNoVariantInTime: no variant can finish before the deadline; the estimate
	// answers instead.
	ReasonNoVariantInTime = "no_variant_meets_deadline"
	// ReasonNoVariantFits: no variant of the application fits the memory budget.
	ReasonNoVariantFits = "no_variant_fits_budget"
	// ReasonNotWorth: the result would be late and worth nothing (or less than
	// nothing, with a utility matrix that charges for wrong answers), and there is
	// no estimate to answer with.
	ReasonNotWorth = "not_worth_running"
	// ReasonEstimateWorthMore: the estimate's own answer is worth at least as
	// much as any model's, in the live class mix (Options.EstimateAnswers).
	ReasonEstimateWorthMore = "estimate_worth_more"
)

// fastest returns the smallest batch-1 latency among the application's variants.
func fastest(a *App) time.Duration {
	best := time.Duration(-1)
	for _, v := range a.Variants {
		if l := v.LatencyAt(1); best < 0 || l < best {
			best = l
		}
	}
	return best
}

// Hopeless reports whether r can no longer produce any utility by running a model:
// started now on the fastest variant, it would end at or after its hard stop.
func Hopeless(r *Request, now time.Time) bool {
	return !now.Add(fastest(r.App)).Before(r.HardStop())
}

// splitHopeless returns the verdicts for hopeless requests and the others, keeping
// order. It allocates only when something is hopeless.
func splitHopeless(q []*Request, now time.Time) ([]Verdict, []*Request) {
	var vs []Verdict
	var keep []*Request
	for i, r := range q {
		if !Hopeless(r, now) {
			if keep != nil {
				keep = append(keep, r)
			}
			continue
		}
		if keep == nil {
			keep = append(make([]*Request, 0, len(q)), q[:i]...)
		}
		vs = append(vs, Verdict{Request: r, Outcome: Expired, Reason: ReasonPastHardStop})
	}
	if keep == nil && vs == nil {
		return nil, q
	}
	return vs, keep
}

// batchUtility is the predicted penalised utility of running rs on v, finishing at t.
func batchUtility(v *Variant, rs []*Request, t time.Time) float64 {
	// The utilities are read first, in a loop of independent reads, so that
	// with a long queue (the requests out of the cache) their misses overlap.
	var buf [64]float64
	u := 0.0
	for len(rs) > 0 {
		n := min(len(rs), len(buf))
		for i, r := range rs[:n] {
			buf[i] = r.ExpUtility[v.Index]
		}
		for i, r := range rs[:n] {
			u += PenalizedUtility(buf[i], r, t)
		}
		rs = rs[n:]
	}
	return u
}

// newBatch assembles a batch with its swap, predicted finish and utility.
func newBatch(s *Snapshot, v *Variant, sw Swap, rs []*Request) *Batch {
	fin := s.Now.Add(sw.Cost + v.LatencyAt(len(rs)))
	return &Batch{
		Variant: v, Requests: rs, Evict: sw.Evict, Load: sw.Load,
		Start: s.Now, Finish: fin, Utility: batchUtility(v, rs, fin),
	}
}
