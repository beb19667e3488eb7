package sneakpeek

// ExpectedAccuracy returns the data-aware accuracy A(m|p) = sum_y p(y) R(y) of a
// variant with per-class recall R, for a request with class distribution p. The
// slices must have the same length.
func ExpectedAccuracy(p, recall []float64) float64 {
	a := 0.0
	for y, py := range p {
		a += py * recall[y]
	}
	return a
}

// ExpectedUtility returns U(m|p) = sum_y p(y) sum_yhat P(yhat|y) W[y][yhat], with
// P(yhat|y) the row-normalised confusion matrix (counts, rows = true class) of the
// variant and W the K x K utility matrix. A class whose confusion row has no
// samples says nothing about the variant on that class; its probability mass
// earns 0, so a variant is never credited on a class it was not validated on.
func ExpectedUtility(p []float64, confusion, w [][]float64) float64 {
	u := 0.0
	for y, py := range p {
		if py == 0 {
			continue
		}
		row := confusion[y]
		tot := 0.0
		for _, c := range row {
			tot += c
		}
		if tot == 0 {
			continue
		}
		s := 0.0
		for yh, c := range row {
			s += c * w[y][yh]
		}
		u += py * s / tot
	}
	return u
}

// ClassUtility returns, for each true class y, the variant's expected utility on
// a request of that class: u(y) = sum_yhat P(yhat|y) W[y][yhat] (0 for a class
// with an empty confusion row). It lets a scheduler precompute per variant what
// ExpectedUtility recomputes: ExpectedUtility(p, confusion, w) equals
// ExpectedAccuracy(p, ClassUtility(confusion, w)), a K-term dot product.
func ClassUtility(confusion, w [][]float64) []float64 {
	u := make([]float64, len(confusion))
	for y, row := range confusion {
		tot := 0.0
		for _, c := range row {
			tot += c
		}
		if tot == 0 {
			continue
		}
		for yh, c := range row {
			u[y] += c * w[y][yh]
		}
		u[y] /= tot
	}
	return u
}

// RowNormalise returns the row-normalised copy of a K x K count matrix (rows = true
// class): P(yhat|y). A row with no samples (a class absent from the validation
// split) becomes uniform when uniformEmpty is set, and stays all zero otherwise,
// which is ExpectedUtility's rule (a variant earns nothing on a class it was not
// validated on).
func RowNormalise(c [][]float64, uniformEmpty bool) [][]float64 {
	out := make([][]float64, len(c))
	for y, row := range c {
		s := 0.0
		for _, x := range row {
			s += x
		}
		out[y] = make([]float64, len(row))
		for j, x := range row {
			switch {
			case s > 0:
				out[y][j] = x / s
			case uniformEmpty:
				out[y][j] = 1 / float64(len(row))
			}
		}
	}
	return out
}
