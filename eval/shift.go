package eval

import (
	"fmt"
	"io"
	"math"
	"text/tabwriter"

	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// Label-shift corrected policies are eval-level names: the scheduler policy
// "sneakpeek" with each request's estimate corrected for the live class mix
// before scheduler.Prepare, in arrival order, as the gateway would:
//
//   - "sneakpeek-shift": sneakpeek.PriorShift, one per run, trained prior = the
//     manifest's prior (scheduler.App.Prior), live prior estimated online by EM
//     from the estimates themselves (Point.Shift configures it). The corrected
//     estimate is used everywhere the estimate is (utilities, grouping,
//     degraded answer).
//   - "sneakpeek-shift-cal": the same with the trained prior replaced by the
//     estimator's own marginal, its mean estimate over the validation split
//     (App.ShiftStart, as the gateway computes it; a synthetic application's
//     samples stand in for the split it does not have). The EM's fixed point is pi = E[q]: when the
//     estimator's mean estimate on its training mix is not that mix (it is not
//     calibrated in the large), the EM started at the manifest prior drifts away
//     from it even on unshifted traffic; with the marginal it stays put.
//   - "sneakpeek-trueprior" (reference, not deployable): Bayes' rule with the
//     workload's true mix at that point of the run, p'(y) ∝ p(y) mix(y)/prior(y):
//     what a perfect prior estimate would give.
//
// The names of the scheduler's own policies keep their behaviour.
const (
	PolicyShift     = "sneakpeek-shift"
	PolicyShiftCal  = "sneakpeek-shift-cal"
	PolicyTruePrior = "sneakpeek-trueprior"
)

type shiftMode int

const (
	shiftOff shiftMode = iota
	shiftOnline
	shiftTrue
	shiftCal
	shiftAnswer
)

func shiftOf(name string) shiftMode {
	switch name {
	case PolicyShift:
		return shiftOnline
	case PolicyShiftCal:
		return shiftCal
	case PolicyTruePrior:
		return shiftTrue
	}
	return shiftOff
}

// evalPolicies are the policy names eval adds to the scheduler's.
var evalPolicies = []string{PolicyCascade, PolicyPeek, PolicyPlacebo, PolicyClassBased, PolicyOracle, PolicyGuarded, PolicyGuardedDeg, PolicyShift, PolicyShiftCal, PolicyTruePrior}

// shifter corrects estimates in arrival order for one run.
type shifter struct {
	mode shiftMode
	ps   *sneakpeek.PriorShift
	// evidence: the live mix counts each request at its outcome, a model's
	// answer by the model's confusion (observe), not its estimate on arrival
	// (GatewayModel.ShiftEvidence; the shiftAnswer mode only).
	evidence bool
	prior    []float64 // the trained prior (true-prior mode)
	n        int
	rawOK    int // arrivals whose raw estimate's argmax is the true class
	corrOK   int // same for the corrected estimate
}

func newShifter(a *App, pt Point) *shifter {
	m := shiftOf(pt.Policy)
	if m == shiftOff && pt.LabelShift && a.Est != nil {
		// The gateway's apps[].label_shift (its default), for every policy:
		// the corrected estimate gives the answer without a model only
		// (scheduler.Reweigh).
		m = shiftAnswer
	}
	if m == shiftOff {
		return nil
	}
	s := &shifter{mode: m}
	switch m {
	case shiftOnline:
		s.ps = sneakpeek.NewPriorShift(a.Sched.Prior, pt.Shift)
	case shiftCal:
		s.ps = sneakpeek.NewPriorShift(a.shiftStart(), pt.Shift)
	case shiftAnswer:
		o := pt.Shift
		o.Answers = a.Answers // the Mix of scheduler.Options.EstimateAnswers
		s.ps = sneakpeek.NewPriorShift(a.shiftStart(), o)
		s.evidence = pt.ShiftEvidence
	default:
		s.prior = sneakpeek.NewPriorShift(a.Sched.Prior, sneakpeek.ShiftOptions{}).TrainPrior()
	}
	return s
}

// correct returns the corrected estimate of sample i arriving at progress prog
// (0..1) of the run. It allocates the returned slice (the request keeps it).
func (s *shifter) correct(a *App, pt *Point, i int, prog float64) []float64 {
	p := a.Est[i]
	dst := make([]float64, len(p))
	switch s.mode {
	case shiftOnline, shiftCal, shiftAnswer:
		if s.evidence {
			s.ps.CorrectOnly(p, dst) // counted at its outcome (observe)
		} else {
			s.ps.Correct(p, dst)
		}
	case shiftTrue:
		w := pt.Workload
		sum, same := 0.0, true
		for y, v := range p {
			mix := w.Mix[y]
			if w.MixEnd != nil {
				mix = (1-prog)*mix + prog*w.MixEnd[y]
			}
			same = same && math.Abs(mix-s.prior[y]) <= 1e-12
			dst[y] = v * mix / s.prior[y]
			sum += dst[y]
		}
		if same {
			// The mix is the prior (up to rounding): Bayes' rule is the identity (keep p exactly;
			// renormalising would change it in the last bits).
			copy(dst, p)
		} else if sum > 0 {
			for y := range dst {
				dst[y] /= sum
			}
		} else {
			copy(dst, p)
		}
	}
	s.n++
	y := a.Labels[i]
	if scheduler.Argmax(p) == y {
		s.rawOK++
	}
	if scheduler.Argmax(dst) == y {
		s.corrOK++
	}
	return dst
}

// observe counts, in evidence mode, a request whose estimate was corrected to
// q on arrival in the live mix once its outcome is known: answered by variant
// v with yhat, by v's validation confusion's column yhat
// (sneakpeek.PriorShift.ObserveAnswer); otherwise (v nil: degraded, shed,
// refused, expired) by q, as Correct would have counted it on arrival.
func (s *shifter) observe(q []float64, v *scheduler.Variant, yhat int) {
	if !s.evidence {
		return
	}
	if v == nil || yhat < 0 {
		if q != nil {
			s.ps.Observe(q)
		}
		return
	}
	like := make([]float64, len(v.Cond))
	for y, row := range v.Cond {
		if yhat < len(row) {
			like[y] = row[yhat]
		}
	}
	s.ps.ObserveAnswer(like)
}

// observer is engineSim's simApp.Observe for s: nil unless in evidence mode.
func (s *shifter) observer() func(q *simReq, v *scheduler.Variant, yhat int) {
	if s == nil || !s.evidence {
		return nil
	}
	return func(q *simReq, v *scheduler.Variant, yhat int) { s.observe(q.answerEst, v, yhat) }
}

func (s *shifter) fill(m *Metrics) {
	if s.n > 0 {
		m.EstAccuracy = float64(s.rawOK) / float64(s.n)
		m.EstAccuracyCorrected = float64(s.corrOK) / float64(s.n)
	}
	if s.ps != nil {
		m.ShiftPrior = s.ps.Prior()
	}
}

// WriteShift prints, for each point with the shift policy sp, its utility next to
// sneakpeek's and oblivious's, the estimator's accuracy on the arrivals before
// and after correction and the final live prior estimate.
func WriteShift(w io.Writer, rs []Result, sp string) error {
	by, order := byPoint(rs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "app\tworkload\tdl_ms\tload\t%s\tsneakpeek\toblivious\test_acc\tcorrected\tprior_hat\t\n", sp)
	for _, k := range order {
		g, ok := by[k][sp]
		if !ok {
			continue
		}
		util := func(p string) string { return utilityOf(by[k], p) }
		pr := "-"
		if g.ShiftPrior != nil {
			pr = ""
			for i, v := range g.ShiftPrior {
				if i > 0 {
					pr += ","
				}
				pr += fmt.Sprintf("%.2f", v)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%g\t%.2f\t%.3f\t%s\t%s\t%.3f\t%.3f\t%s\t\n", k.app, k.wl, k.dl, k.ld,
			g.Utility, util("sneakpeek"), util("oblivious"), g.EstAccuracy, g.EstAccuracyCorrected, pr)
	}
	return tw.Flush()
}

// shiftStart is where the label-shift correction starts: App.ShiftStart (the
// validation split's mean estimate), else the manifest's prior, as the
// gateway's shiftStart.
func (a *App) shiftStart() []float64 {
	if a.ShiftStart != nil {
		return a.ShiftStart
	}
	return a.Sched.Prior
}

// EstimateMarginal is the estimator's mean estimate over the replayed samples in
// the application's prior mix: sum_y prior(y) * mean of the estimates of class y's
// samples. For an estimator calibrated in the large it equals the prior.
func (a *App) EstimateMarginal() []float64 {
	k := a.Sched.K
	out := make([]float64, k)
	for y, idx := range a.byClass {
		if len(idx) == 0 || y >= len(a.Sched.Prior) {
			continue
		}
		w := a.Sched.Prior[y] / float64(len(idx))
		for _, i := range idx {
			for c, v := range a.Est[i] {
				out[c] += w * v
			}
		}
	}
	return out
}
