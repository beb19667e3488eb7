package eval

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// Guarded policies are eval-level names: the scheduler policy "sneakpeek" plus a
// sneakpeek.Guard per run, fed as the gateway feeds it (the estimate of every
// request the application's most accurate variant served, with that variant's
// real answer as the reference). While the guard distrusts the estimates:
//
//   - "sneakpeek-guarded": a new request is prepared without its estimate
//     (scheduler.Prepare with p == nil): profiled utilities, no degraded answer
//     for it (what cannot be served in time expires), as the oblivious policy.
//   - "sneakpeek-guarded-deg": profiled utilities for the variants, but the
//     request keeps its estimate for a degraded answer, valued as the estimate
//     values it (DegradedUtility), grouped per application.
//
// The names of the scheduler's own policies keep their behaviour.
const (
	PolicyGuarded    = "sneakpeek-guarded"
	PolicyGuardedDeg = "sneakpeek-guarded-deg"
)

type guardMode int

const (
	guardOff guardMode = iota
	guardNil
	guardKeepDegraded
)

// resolvePolicy maps an eval policy name to the scheduler policy and guard mode.
func resolvePolicy(name string) (string, guardMode) {
	switch name {
	case PolicyGuarded:
		return "sneakpeek", guardNil
	case PolicyGuardedDeg:
		return "sneakpeek", guardKeepDegraded
	case PolicyShift, PolicyShiftCal, PolicyTruePrior, PolicyPlacebo, PolicyClassBased, PolicyOracle, PolicyPeek:
		return "sneakpeek", guardOff
	}
	return name, guardOff
}

// CheckPolicy returns an error when name is neither a scheduler policy nor one
// of eval's (guarded, label-shift corrected).
func CheckPolicy(name string) error {
	base, _ := resolvePolicy(name)
	if base == PolicyCascade {
		return nil
	}
	if _, err := scheduler.New(base, scheduler.Options{}); err != nil {
		return fmt.Errorf("%w (eval also knows %s)", err, strings.Join(evalPolicies, ", "))
	}
	return nil
}

// GuardBaseline is the guard's baseline for a: the gap (sneakpeek.GuardBaseline)
// of the estimates against the reference variant's answers over all replayed
// samples once each, i.e. on the held-out data in its natural (stratified) mix,
// which stands in for the validation split here. Computed once per App.
func (a *App) GuardBaseline() float64 {
	a.guardOnce.Do(func() {
		sa := a.Sched
		ref := sa.DefaultVariant
		refs := make([]int, len(a.Labels))
		for i := range a.Labels {
			refs[i] = Predict(a, i, ref, 0, uint64(i+1))
		}
		a.guardBase = sneakpeek.GuardBaseline(a.Est, refs, sa.Variants[ref].Cond)
		a.guardClass = sneakpeek.GuardClassBaseline(a.Est, refs, sa.Variants[ref].Cond, sa.K, 0)
	})
	return a.guardBase
}

// GuardClassBaseline is the per-class baseline (sneakpeek.GuardClassBaseline) on
// the same pairs as GuardBaseline.
func (a *App) GuardClassBaseline() []float64 {
	a.GuardBaseline()
	return a.guardClass
}

// newGuard builds the run's guard: reference = the most accurate variant's
// validation confusion, per-class baseline = a.GuardClassBaseline(), other
// options from o.
func newGuard(a *App, o sneakpeek.GuardOptions) *sneakpeek.Guard {
	o.Reference = a.Sched.Variants[a.Sched.DefaultVariant].Cond
	o.Baseline = a.GuardBaseline()
	o.ClassBaseline = a.GuardClassBaseline()
	return sneakpeek.NewGuard(o)
}

// prepareGuarded builds a request whose estimate p is distrusted, in mode m.
func prepareGuarded(sa *scheduler.App, m guardMode, seq uint64, arr, dl time.Time, p []float64, ref any) *scheduler.Request {
	r := scheduler.Prepare(sa, seq, arr, dl, nil, ref)
	if m == guardKeepDegraded && p != nil {
		// Keep the estimate only for the degraded answer: variants are valued
		// obliviously and grouping stays per application (Class -1).
		c := scheduler.Argmax(p)
		r.P = p
		for y, py := range p {
			r.DegradedUtility += py * sa.Utility[y][c]
		}
	}
	return r
}

// WriteGuard prints, for each point with the guarded policy gp, its utility next
// to sneakpeek's and oblivious's, the share of requests it prepared distrusted,
// its guard's verdict changes, observations and final gap.
func WriteGuard(w io.Writer, rs []Result, gp string) error {
	by, order := byPoint(rs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "app\tworkload\tdl_ms\tload\t%s\tsneakpeek\toblivious\tdistrusted\tflips\tobserved\tgap-baseline\t\n", gp)
	for _, k := range order {
		g, ok := by[k][gp]
		if !ok {
			continue
		}
		util := func(p string) string { return utilityOf(by[k], p) }
		fmt.Fprintf(tw, "%s\t%s\t%g\t%.2f\t%.3f\t%s\t%s\t%.0f%%\t%d\t%d\t%+.3f\t\n", k.app, k.wl, k.dl, k.ld,
			g.Utility, util("sneakpeek"), util("oblivious"), 100*g.Distrusted, g.GuardFlips, g.GuardObserved, g.GuardGap)
	}
	return tw.Flush()
}
