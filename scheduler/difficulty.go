package scheduler

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
		base := 0.0
		for y, py := range p {
			base += py * v.Recall[y]
		}
		if !(base > 0) || !(c[m] >= 0) {
			continue
		}
		cm := min(c[m], 1)
		u, acc := 0.0, 0.0
		for y, py := range p {
			if py == 0 {
				continue
			}
			ry := v.Recall[y]
			switch {
			case cm < base:
				ry *= cm / base
			case base < 1:
				ry = 1 - (1-ry)*(1-cm)/(1-base)
			}
			wrong, miss := 0.0, 1-v.Cond[y][y]
			if miss > 1e-12 {
				for yh, q := range v.Cond[y] {
					if yh != y {
						wrong += q * w[y][yh]
					}
				}
				wrong /= miss
			}
			u += py * (ry*w[y][y] + (1-ry)*wrong)
			acc += py * ry
		}
		r.ExpUtility[m], r.ExpAccuracy[m] = u, acc
	}
}
