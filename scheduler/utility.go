package scheduler

import (
	"fmt"
	"math"
	"time"

	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// Penalty is the fraction of utility kept by a result that finishes at finish, for a
// request with the given deadline and whole budget D: 1 up to the deadline, then
// 1-S(x) with x = (finish-deadline)/D and S(x) = x^3/(x^3+(1-x)^3), and 0 from
// deadline+D on.
func Penalty(finish, deadline time.Time, budget time.Duration) float64 {
	late := finish.Sub(deadline)
	if late <= 0 {
		return 1
	}
	if budget <= 0 || late >= budget {
		return 0
	}
	x := float64(late) / float64(budget)
	x3, y3 := x*x*x, (1-x)*(1-x)*(1-x)
	return 1 - x3/(x3+y3)
}

// PenalizedUtility is u discounted for a result of r finishing at finish: from u
// on time down to r's no-answer value at the hard stop (Discount). A u at or below
// the no-answer value (a utility matrix may value wrong answers below zero) is
// kept whole: lateness never turns a cost into a gain.
func PenalizedUtility(u float64, r *Request, finish time.Time) float64 {
	return Discount(u, r.NoAnswerUtility, Penalty(finish, r.Deadline, r.Budget()))
}

// Discount is the value of a result worth u on time that keeps the fraction
// penalty of its advantage over no answer (worth floor): floor + (u-floor)*penalty
// when u > floor, u itself otherwise. With floor 0 it is u*penalty for a gain
// and u for a cost.
func Discount(u, floor, penalty float64) float64 {
	if u <= floor || penalty >= 1 {
		return u
	}
	return floor + (u-floor)*penalty
}

// ExpectedUtility is U(m|p) = sum_y p(y) sum_yhat cond[y][yhat] W[y][yhat] for a
// row-normalised confusion matrix cond (sneakpeek.ExpectedUtility takes counts).
// A class absent from the validation set has an all-zero row and earns 0, as in
// package sneakpeek.
func ExpectedUtility(p []float64, cond, w [][]float64) float64 {
	u := 0.0
	for y, py := range p {
		if py == 0 {
			continue
		}
		row, wy := cond[y], w[y]
		s := 0.0
		for yh, c := range row {
			s += c * wy[yh]
		}
		u += py * s
	}
	return u
}

// Argmax returns the index of the largest value (the first on ties), -1 if empty
// or all NaN: sneakpeek.Argmax, here for the scheduler's callers.
func Argmax(p []float64) int { return sneakpeek.Argmax(p) }

// NewApp builds the scheduler's view of an application from its manifest. Latency,
// Load, Unload and MemBytes of each variant are left for the caller to fill from the
// engine's measured profiles.
func NewApp(m *manifest.App) (*App, error) {
	a := &App{
		Name:    m.Name,
		K:       m.K(),
		Prior:   append([]float64(nil), m.Prior...),
		Utility: m.Utility,
	}
	if m.NoAnswerUtility != nil {
		a.NoAnswer = append([]float64(nil), m.NoAnswerUtility...)
	}
	best := -1.0
	for i, mv := range m.Variants {
		v := &Variant{
			ID:       VariantID{App: m.Name, Variant: mv.Name},
			Index:    i,
			Accuracy: mv.Accuracy,
			Recall:   append([]float64(nil), mv.Recall...),
			Cond:     sneakpeek.RowNormalise(mv.Confusion, false),
		}
		v.ProfiledUtility = ExpectedUtility(a.Prior, v.Cond, a.Utility)
		if square(a.Utility, a.K) && square(v.Cond, a.K) {
			v.wrong, v.wrongFor = make([]float64, a.K), a.Utility
			for y := range v.wrong {
				v.wrong[y] = computeWrongValue(v, a.Utility, y)
			}
		}
		if math.IsNaN(v.ProfiledUtility) {
			return nil, fmt.Errorf("scheduler: app %s variant %s: profiled utility is NaN", m.Name, mv.Name)
		}
		if v.Accuracy > best {
			best, a.DefaultVariant = v.Accuracy, i
		}
		a.Variants = append(a.Variants, v)
	}
	return a, nil
}

// square reports whether m is k x k.
func square(m [][]float64, k int) bool {
	if len(m) != k {
		return false
	}
	for _, row := range m {
		if len(row) != k {
			return false
		}
	}
	return true
}

// Prepare builds a queued request with its per-variant expected utilities. p is the
// SneakPeek estimate (nil when the application has no estimator); it is kept, not
// copied.
func Prepare(app *App, seq uint64, arrival, deadline time.Time, p []float64, ref any) *Request {
	r := &Request{
		Seq: seq, App: app, Arrival: arrival, Deadline: deadline, P: p, Class: -1, Ref: ref,
		ExpUtility:  make([]float64, len(app.Variants)),
		ExpAccuracy: make([]float64, len(app.Variants)),
	}
	for i, v := range app.Variants {
		if p == nil {
			r.ExpUtility[i] = v.ProfiledUtility
			r.ExpAccuracy[i] = v.Accuracy
			continue
		}
		r.ExpUtility[i] = ExpectedUtility(p, v.Cond, app.Utility)
		r.ExpAccuracy[i] = sneakpeek.ExpectedAccuracy(p, v.Recall)
	}
	if p != nil {
		r.Class = Argmax(p)
		for y, py := range p {
			r.DegradedUtility += py * app.Utility[y][r.Class]
		}
	}
	r.NoAnswerUtility = app.ExpectedNoAnswer(p)
	return r
}

// Reweigh makes q, a corrected estimate of r's class (the label-shift
// correction for the live class mix, sneakpeek.PriorShift), what r's answer
// without a model is taken from and judged by: r.P (a degraded answer is
// argmax q), DegradedUtility and NoAnswerUtility, so the shedding walk, the
// admission gate and the answers it gives use it. r's variant values
// (ExpUtility, ExpAccuracy) and its grouping class (Class) stay those of the
// estimate Prepare (and Sharpen) had: the correction sharpens estimates toward
// the classes the live mix is heavy in, and with it choosing variants (and
// grouping by the corrected class) lost at low load, where no answer comes
// from the estimate (vad quiet-room at load 1: 0.015 below the uncorrected
// estimate; docs/evaluation-log.md, "Label-shift correction").
//
// What a model answer is worth under q is kept apart, in ShiftedUtility, for
// the one comparison that needs both sides in the live mix: answering from
// the estimate instead of a model (Options.EstimateAnswers). Each variant's
// per-class recalls are those Sharpen left (its correctness on this input,
// spread over the classes in proportion to the variant's recalls, which under
// label shift do not change with the mix) and q weighs them:
//
//	ShiftedUtility[m] = sum_y q(y) [ r'_m(y) W[y][y] + (1 - r'_m(y)) wrong_m(y) ]
//
// mix (the Mix q was corrected with) is kept in r.Mix. q and mix are kept,
// not copied; q nil (no correction) leaves r as it is.
func Reweigh(r *Request, q []float64, mix *sneakpeek.Mix) {
	if q == nil || len(q) != r.App.K {
		return
	}
	if p := r.P; p != nil {
		w := r.App.Utility
		r.ShiftedUtility = make([]float64, len(r.App.Variants))
		for m, v := range r.App.Variants {
			base := sneakpeek.ExpectedAccuracy(p, v.Recall)
			u := 0.0
			for y, qy := range q {
				if qy == 0 {
					continue
				}
				ry := sharpRecall(v.Recall[y], r.ExpAccuracy[m], base)
				u += qy * (ry*w[y][y] + (1-ry)*wrongValue(v, w, y))
			}
			r.ShiftedUtility[m] = u
		}
	}
	r.P = q
	r.Mix = mix
	c := Argmax(q)
	r.DegradedUtility = 0
	for y, py := range q {
		r.DegradedUtility += py * r.App.Utility[y][c]
	}
	r.NoAnswerUtility = r.App.ExpectedNoAnswer(q)
}

// ExpectedNoAnswer is the expected value of no answer, sum_y p(y) NoAnswer[y],
// under p or under the prior when p is nil; 0 when the application sets none.
func (a *App) ExpectedNoAnswer(p []float64) float64 {
	if a.NoAnswer == nil {
		return 0
	}
	if p == nil {
		p = a.Prior
	}
	u := 0.0
	for y, py := range p {
		if y < len(a.NoAnswer) {
			u += py * a.NoAnswer[y]
		}
	}
	return u
}
