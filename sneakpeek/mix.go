package sneakpeek

import (
	"fmt"
	"math"
)

// Mix is the live class mix as a PriorShift estimates it, and what the
// corrected estimate's own answers are worth in it: the two numbers a scheduler
// needs to judge, without labels, whether answering a request from its estimate
// is worth more than running a model on it (scheduler.Options.EstimateAnswers).
// A Mix is never changed once published; a PriorShift publishes a new one every
// MixRefresh corrections.
type Mix struct {
	// Prior is the live prior estimate pi_hat.
	Prior []float64
	// Answer is the expected utility of answering with the argmax of the
	// corrected estimate in the mix Prior, measured on labelled rows
	// (AnswerValue.Value); NaN when the PriorShift has no AnswerValue.
	Answer float64
	// n orders the snapshots (a later one replaces it).
	n int64
}

// MixRefresh is how many corrections a PriorShift makes between two Mixes. The
// live prior moves by at most 1/Window of the way per correction, so with the
// default window of 300 a Mix is at most a fifth of a window old; computing one
// costs one pass over the labelled rows (fashion: 10,000 validation rows of 10
// classes), shared by the 64 requests: a few numbers per row where the live mix
// is near the validation split's, every value of most rows where it is far
// (AnswerValue.Value).
const MixRefresh = 64

// AnswerValue measures, on labelled rows (an application's validation split),
// what the label-shift-corrected estimate's answer is worth in a given class
// mix: for the live prior pi and the correction ratio r = pi / pi_train,
//
//	V(pi) = sum_y pi(y) mean_{i of class y} W[y][argmax_c p_i(c) r(c)]
//
// the utility W of the corrected argmax, averaged per true class over the rows
// and weighted by the mix. Under label shift (p(x|y) unchanged) this is the
// expected utility of the estimate's answers on the live stream, as a
// variant's profiled utility sum_y pi(y) sum_c Cond[y][c] W[y][c] is the
// expected utility of its answers: the two can be compared, which the
// per-request values alone (noisy, and less reliable for the estimate on
// inputs unlike the validation split's) cannot safely be.
type AnswerValue struct {
	labels []int32
	est    [][]float64 // per row, len K
	w      [][]float64
	n      []int // rows per class
	// Per row, its estimate's largest value top1, at class top, and the largest
	// of the others, top2; top is -1 for a row whose values are not all finite
	// and non-negative. Value takes a row's argmax under a ratio r without
	// looking at its K values when top1 * min(r) > top2 * max(r): then class
	// top's p*r is above every other class's (see Value).
	top        []int32
	top1, top2 []float64
}

// MeanEstimate is the mean of the estimates est (each of at least k values;
// the first k count), a zero vector for none: over an application's validation
// split, where the label-shift correction starts (the gateway and the
// simulator both start there).
func MeanEstimate(est [][]float64, k int) []float64 {
	mean := make([]float64, k)
	for _, p := range est {
		for c, v := range p[:k] {
			mean[c] += v
		}
	}
	for c := range mean {
		mean[c] /= float64(max(len(est), 1))
	}
	return mean
}

// NewAnswerValue keeps labelled rows for V: labels[i] is row i's class, est[i]
// its estimate (len K), w the application's utility matrix (K x K, w[y][c]:
// the value of answering c when the class is y). est and w are kept, not
// copied: the caller must not change them.
func NewAnswerValue(labels []int, est [][]float64, w [][]float64) (*AnswerValue, error) {
	k := len(w)
	if k < 2 || len(labels) != len(est) || len(labels) == 0 {
		return nil, fmt.Errorf("%w: answer value: %d labels, %d estimates, %d classes", ErrParams, len(labels), len(est), k)
	}
	a := &AnswerValue{labels: make([]int32, len(labels)), est: est, w: w, n: make([]int, k),
		top: make([]int32, len(labels)), top1: make([]float64, len(labels)), top2: make([]float64, len(labels))}
	for y, row := range w {
		if len(row) != k {
			return nil, fmt.Errorf("%w: answer value: utility row %d has %d values, want %d", ErrParams, y, len(row), k)
		}
	}
	for i, y := range labels {
		if y < 0 || y >= k || len(est[i]) != k {
			return nil, fmt.Errorf("%w: answer value: row %d: class %d, %d estimates (want 0..%d and %d)", ErrParams, i, y, len(est[i]), k-1, k)
		}
		a.labels[i] = int32(y)
		a.n[y]++
		a.top[i], a.top1[i], a.top2[i] = topTwo(est[i])
	}
	return a, nil
}

// topTwo returns p's largest value, its class and the largest of the other
// values, or class -1 if a value is negative or not finite (or p has fewer
// than two).
func topTwo(p []float64) (top int32, top1, top2 float64) {
	if len(p) < 2 {
		return -1, 0, 0
	}
	top, top1, top2 = 0, p[0], math.Inf(-1)
	for c, v := range p {
		if !(v >= 0) || math.IsInf(v, 1) {
			return -1, 0, 0
		}
		if c == 0 {
			continue
		}
		if v > top1 {
			top, top1, top2 = int32(c), v, top1
		} else if v > top2 {
			top2 = v
		}
	}
	return top, top1, top2
}

// Value is V(prior) with the correction ratio (len K each); classes without a
// row contribute nothing. It does not allocate beyond a K-sized scratch.
//
// A row's argmax of p(c) r(c) is its top class without a look at its other
// values when top1 * min(r) > top2 * max(r) (ratios positive and finite, the
// row's values finite and non-negative): p(top) r(top) >= top1 min(r) and
// p(c) r(c) <= top2 max(r) for every other c, and rounding each product to a
// float64 keeps both inequalities, so the strict one between them holds for
// the products the full scan compares. Where the live mix is near the
// validation split's (r near 1) that is nearly every row, and a Mix costs a
// pass over a few numbers per row instead of K products
// (BenchmarkAnswerValue); other rows, and every row under a ratio that is not
// positive and finite, take the full scan, so the value is the same either way
// (TestAnswerValueFastPathIsExact).
func (a *AnswerValue) Value(prior, ratio []float64) float64 {
	sum := make([]float64, len(a.n))
	rmin, rmax, fast := ratioBounds(ratio[:len(a.n)])
	for i, y := range a.labels {
		if fast && a.top[i] >= 0 && a.top1[i]*rmin > a.top2[i]*rmax {
			sum[y] += a.w[y][a.top[i]]
			continue
		}
		p := a.est[i]
		best, bc := math.Inf(-1), 0
		for c, v := range p {
			if x := v * ratio[c]; x > best {
				best, bc = x, c
			}
		}
		sum[y] += a.w[y][bc]
	}
	v := 0.0
	for y, s := range sum {
		if a.n[y] > 0 {
			v += prior[y] * s / float64(a.n[y])
		}
	}
	return v
}

// ratioBounds returns r's smallest and largest values, and whether every value
// is positive and finite (else the bounds are not to be used).
func ratioBounds(r []float64) (lo, hi float64, ok bool) {
	lo, hi = math.Inf(1), 0
	for _, v := range r {
		if !(v > 0) || math.IsInf(v, 1) {
			return 0, 0, false
		}
		lo, hi = min(lo, v), max(hi, v)
	}
	return lo, hi, len(r) > 0
}
