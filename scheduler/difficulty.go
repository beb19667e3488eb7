package scheduler

import "github.com/sneakgate/sneakgate/sneakpeek"

// Sharpen refines a prepared request's expected accuracy and utility with
// per-sample correctness: c[m] is the probability that variant m answers this
// request correctly (sneakpeek.Difficulty), where Prepare could only say how
// often m is right on requests of each class. For each variant it moves the
// class recalls r(y) so that the expected accuracy sum_y p(y) r'(y) becomes
// c[m] while keeping their proportions: below the class-based value
// A = sum_y p(y) r(y) the recalls shrink by c/A; above it the error rates
// 1 - r(y) shrink by (1-c)/(1-A). Wrong answers are valued as the confusion
// matrix distributes them:
//
//	U(m|x) = sum_y p(y) [ r'(y) W[y][y] + (1 - r'(y)) wrong_m(y) ]
//	wrong_m(y) = sum_{yhat != y} Cond_m[y][yhat] W[y][yhat] / (1 - Cond_m[y][y])
//
// With c[m] equal to the class-based expected accuracy, U is Prepare's value.
// Sharpen does nothing without an estimate or when c does not have one value
// per variant.
func Sharpen(r *Request, c []float64) {
	p := r.P
	if p == nil || len(c) != len(r.App.Variants) {
		return
	}
	w := r.App.Utility
	for m, v := range r.App.Variants {
		base := sneakpeek.ExpectedAccuracy(p, v.Recall)
		if !(base > 0) || !(c[m] >= 0) {
			continue
		}
		cm := min(c[m], 1)
		u, acc := 0.0, 0.0
		for y, py := range p {
			if py == 0 {
				continue
			}
			ry := sharpRecall(v.Recall[y], cm, base)
			u += py * (ry*w[y][y] + (1-ry)*wrongValue(v, w, y))
			acc += py * ry
		}
		r.ExpUtility[m], r.ExpAccuracy[m] = u, acc
	}
}

// sharpRecall moves a class recall ry so that a variant whose expected
// accuracy is base under an estimate has accuracy c instead, keeping the
// recalls' proportions (Sharpen): below base the recalls shrink by c/base,
// above it the error rates 1 - ry shrink by (1-c)/(1-base). c == base gives ry.
func sharpRecall(ry, c, base float64) float64 {
	switch {
	case c < base:
		return ry * (c / base)
	case base < 1:
		return 1 - (1-ry)*(1-c)/(1-base)
	}
	return ry
}

// wrongValue is the value of v's wrong answers to class y as its confusion
// matrix distributes them: sum_{yhat != y} Cond[y][yhat] W[y][yhat] / (1 - Cond[y][y])
// (0 when v is never wrong on y); from v's table when NewApp made one for w.
func wrongValue(v *Variant, w [][]float64, y int) float64 {
	if v.wrong != nil && len(w) > 0 && len(v.wrongFor) == len(w) && &v.wrongFor[0] == &w[0] {
		return v.wrong[y]
	}
	return computeWrongValue(v, w, y)
}

// computeWrongValue is wrongValue computed from v's confusion matrix.
func computeWrongValue(v *Variant, w [][]float64, y int) float64 {
	miss := 1 - v.Cond[y][y]
	if !(miss > 1e-12) {
		return 0
	}
	wrong := 0.0
	for yh, q := range v.Cond[y] {
		if yh != y {
			wrong += q * w[y][yh]
		}
	}
	return wrong / miss
}
