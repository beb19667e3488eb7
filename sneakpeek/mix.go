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
// classes), shared by the 64 requests.
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
	a := &AnswerValue{labels: make([]int32, len(labels)), est: est, w: w, n: make([]int, k)}
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
	}
	return a, nil
}

// Value is V(prior) with the correction ratio (len K each); classes without a
// row contribute nothing. It does not allocate beyond a K-sized scratch.
func (a *AnswerValue) Value(prior, ratio []float64) float64 {
	sum := make([]float64, len(a.n))
	for i, y := range a.labels {
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
