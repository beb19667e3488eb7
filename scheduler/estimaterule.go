package scheduler

import (
	"math"
	"sync/atomic"

	"github.com/sneakgate/sneakgate/sneakpeek"
)

// EstimateRule is the test of Options.EstimateAnswers made at admission: it
// lets a caller answer from its estimate (degraded, ReasonEstimateWorthMore),
// before the request is journaled and queued, an arrival that the policy's
// prepass would answer so at its first decision. The test reads only the
// request (its corrected estimate's values and the Mix it was corrected for),
// the policy's Options.Shrink and which variants can be made resident; not the
// time, the queue or the price. So an arrival it answers is one the prepass
// answers whenever it decides, and one it passes over the prepass passes over
// too (for the same variants): the queue never holds a request the estimate
// answers, and a decision over a prefix of a long queue (bounded.go) misses
// none beyond it.
//
// A searching, data-aware policy with Options.EstimateAnswers sets it on every
// decision (Decision.Answers; the same value while its applications and their
// resident-able variants stay the same). It is safe to share between
// goroutines.
type EstimateRule struct {
	shrink float64
	// budget is the memory budget ok was computed for.
	budget int64
	apps   map[*App]*ruleApp
}

type ruleApp struct {
	// ok[m] says whether variant m can be made resident (appInfo.ok0).
	ok []bool
	// mix caches the mix test's values for the last Mix an admission saw.
	mix atomic.Pointer[mixValues]
}

// Answers reports whether r (prepared: Prepare, Sharpen where the application
// has a difficulty model, then Reweigh) is answered from its corrected
// estimate because that is worth more than any model. It says false for an
// application version the rule does not know, and for a nil rule.
func (e *EstimateRule) Answers(r *Request) bool {
	if e == nil || !estimateCandidate(r) {
		return false
	}
	ra := e.apps[r.App]
	if ra == nil || len(ra.ok) != len(r.App.Variants) {
		return false
	}
	mv := ra.mix.Load()
	if mv == nil || mv.mix != r.Mix {
		mv = newMixValues(r.App, r.Mix, ra.ok)
		ra.mix.Store(mv)
	}
	return estimateWorthMore(r, ra.ok, mv, e.shrink)
}

// estimateRule returns the rule for s: the last one (p.rule) when s's applications and
// their resident-able variants are those it was made for, a new one
// otherwise; nil for a view that does not answer from the estimate. Its cost
// is a look-up per variant.
func (p *searching) estimateRule(s *Snapshot) *EstimateRule {
	if !p.w.estimateAnswers || !p.w.dataAware || p.w.noDegrade {
		return nil
	}
	if e := p.rule; e != nil && e.budget == s.Engine.MemBudget && len(e.apps) == len(s.Apps) && e.holds(s) {
		return e
	}
	e := &EstimateRule{shrink: p.o.Shrink, budget: s.Engine.MemBudget, apps: make(map[*App]*ruleApp, len(s.Apps))}
	for _, a := range s.Apps {
		ok := make([]bool, len(a.Variants))
		for i, v := range a.Variants {
			ok[i] = canReside(s, v)
		}
		e.apps[a] = &ruleApp{ok: ok}
	}
	return e
}

// holds reports whether e's applications are s's with the same resident-able
// variants.
func (e *EstimateRule) holds(s *Snapshot) bool {
	for _, a := range s.Apps {
		ra := e.apps[a]
		if ra == nil || len(ra.ok) != len(a.Variants) {
			return false
		}
		for i, v := range a.Variants {
			if ra.ok[i] != canReside(s, v) {
				return false
			}
		}
	}
	return true
}

// canReside is resSet.cost's ok for s's residency: v is resident, or fits the
// memory budget alone.
func canReside(s *Snapshot, v *Variant) bool {
	if _, ok := s.Engine.Resident[v.ID]; ok {
		return true
	}
	return fitsAlone(v, s.Engine.MemBudget)
}

// fitsAlone reports whether v fits the memory budget (0: unlimited) in an
// otherwise empty engine.
func fitsAlone(v *Variant, memBudget int64) bool { return memBudget <= 0 || v.MemBytes <= memBudget }

// estimateCandidate is what the test asks of r before any value: a first
// answer to come (not back from a first pass), an estimate, an estimate's
// answer worth no less than no answer, and the label-shift correction's
// values (Request.Mix, Request.ShiftedUtility; Reweigh).
func estimateCandidate(r *Request) bool {
	mx := r.Mix
	return r.First == nil && r.P != nil && r.DegradedUtility >= r.NoAnswerUtility &&
		mx != nil && r.ShiftedUtility != nil && !math.IsNaN(mx.Answer) && len(mx.Prior) == r.App.K
}

// mixValues is what the mix test needs of one Mix: each variant's profiled
// utility in the mix mix.Prior, and whether the estimate's answers are worth
// at least every resident-able variant's there. Immutable once made.
type mixValues struct {
	mix  *sneakpeek.Mix
	prof []float64
	ok   bool
}

// newMixValues values mx for a's variants; ok says which can be made resident.
// With none that can, the test says no (the prepass answers such a request
// expired, no_variant_fits_budget, before it asks), so that admission's rule
// and the prepass agree.
func newMixValues(a *App, mx *sneakpeek.Mix, ok []bool) *mixValues {
	mv := &mixValues{mix: mx, prof: make([]float64, len(a.Variants))}
	some, worth := false, true
	for i, v := range a.Variants {
		mv.prof[i] = ExpectedUtility(mx.Prior, v.Cond, a.Utility)
		if ok[i] {
			some = true
			worth = worth && mv.prof[i] <= mx.Answer // NaN: not worth more
		}
	}
	mv.ok = some && worth
	return mv
}

// estimateWorthMore reports whether r's answer from its corrected estimate is
// worth at least as much as every model answer that can be made resident (ok)
// (Options.EstimateAnswers); r is an estimateCandidate and mv its Mix's
// values. Both sides are valued in the live class mix, in two steps:
//
//   - in the mix: the corrected estimate's answers, measured on the validation
//     split (sneakpeek.Mix.Answer), must be worth at least each variant's
//     profiled utility in the mix Mix.Prior. Where the models are worth more
//     on average (every bundled workload that is not shifted toward what the
//     models miss), the estimate never answers for them.
//
//   - per request: its degraded value and each variant's value under the
//     corrected estimate (ShiftedUtility), both shrunk by Options.Shrink
//     toward those mix values, as the planner shrinks a variant's value
//     toward its profiled one:
//
//     (1-s) DegradedUtility + s Mix.Answer  >=  (1-s) ShiftedUtility[m] + s U_profiled(m | Mix.Prior)
//
// Per-request values alone trust the estimate where it is confidently wrong
// on inputs unlike the validation split's: unshrunk they lost 0.013 on vad's
// natural mix, shrunk but without the mix test 0.002-0.007 on satellite's
// natural and red-soil mixes (docs/evaluation-log.md, "Answers from the
// estimate").
func estimateWorthMore(r *Request, ok []bool, mv *mixValues, shrink float64) bool {
	if !mv.ok {
		return false
	}
	du := shrinkTo(r.DegradedUtility, mv.mix.Answer, shrink)
	for i, u := range r.ShiftedUtility {
		if ok[i] && !(shrinkTo(u, mv.prof[i], shrink) <= du) {
			return false
		}
	}
	return true
}
