package sneakpeek

import (
	"cmp"
	"fmt"
	"math"
	"slices"
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
// (AnswerValue.Value over fashion's 10,000 validation rows of 10 classes) is
// shared by the 64 requests: a binary search per class and a scan of the rows
// whose two largest estimates are close where the live mix is near the
// validation split's, a scan of most rows where it is far.
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
	w [][]float64
	n []int // rows per class
	// Per class y, its rows in order of decreasing margin (margin[y]): a row's
	// largest estimate over the largest of its others, top1 / top2, -Inf for a
	// row whose values are not all finite and non-negative, or whose top1 is
	// outside [minMarginTop, maxMarginTop], +Inf for one with a single non-zero
	// value. cum[y][j] is the sum, in that order, of w[y][top] over its first j
	// rows (top: the row's class of top1): Value takes a row's argmax under a
	// ratio r to be its top class without looking at its K values when its
	// margin exceeds max(r) / min(r) (with room for rounding), which holds for
	// a prefix of the class's rows, and adds that prefix's utility as cum[y][j].
	margin [][]float64
	cum    [][]float64
	// sorted holds, per class, its rows' estimates in that order (K values a
	// row), one after another: the rows Value scans are read in sequence, not
	// gathered from wherever the caller's rows were (on a busy machine the pass
	// over them is cold, and scattered reads cost most of it).
	sorted [][]float64
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
// the value of answering c when the class is y). w is kept, not copied: the
// caller must not change it; est is copied, in each class's order of margin (K
// float64s a row), and not kept.
func NewAnswerValue(labels []int, est [][]float64, w [][]float64) (*AnswerValue, error) {
	k := len(w)
	if k < 2 || len(labels) != len(est) || len(labels) == 0 {
		return nil, fmt.Errorf("%w: answer value: %d labels, %d estimates, %d classes", ErrParams, len(labels), len(est), k)
	}
	a := &AnswerValue{w: w, n: make([]int, k), margin: make([][]float64, k), cum: make([][]float64, k),
		sorted: make([][]float64, k)}
	for y, row := range w {
		if len(row) != k {
			return nil, fmt.Errorf("%w: answer value: utility row %d has %d values, want %d", ErrParams, y, len(row), k)
		}
	}
	type ranked struct {
		row    int32
		top    int32
		margin float64
	}
	byClass := make([][]ranked, k)
	for i, y := range labels {
		if y < 0 || y >= k || len(est[i]) != k {
			return nil, fmt.Errorf("%w: answer value: row %d: class %d, %d estimates (want 0..%d and %d)", ErrParams, i, y, len(est[i]), k-1, k)
		}
		a.n[y]++
		top, top1, top2 := topTwo(est[i])
		m := math.Inf(-1)
		if top >= 0 && top1 >= minMarginTop && top1 <= maxMarginTop {
			m = top1 / top2 // +Inf when top2 is 0
		}
		byClass[y] = append(byClass[y], ranked{int32(i), top, m})
	}
	for y, rs := range byClass {
		// Stable: rows of equal margin keep their order, so the order (and the
		// rounding of the sums) depends only on the rows.
		slices.SortStableFunc(rs, func(p, q ranked) int { return cmp.Compare(q.margin, p.margin) })
		a.margin[y], a.cum[y] = make([]float64, len(rs)), make([]float64, len(rs)+1)
		a.sorted[y] = make([]float64, 0, len(rs)*k)
		for j, r := range rs {
			a.sorted[y] = append(a.sorted[y], est[r.row]...)
			a.margin[y][j] = r.margin
			if r.top >= 0 {
				a.cum[y][j+1] = a.cum[y][j] + w[y][r.top]
			} else {
				a.cum[y][j+1] = a.cum[y][j] // never read: margin -Inf is never past the bound
			}
		}
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
// row contribute nothing. It does not allocate.
//
// A row's argmax of p(c) r(c) is its top class without a look at its other
// values when top1 * min(r) > top2 * max(r) (ratios positive and finite, the
// row's values finite and non-negative): p(top) r(top) >= top1 min(r) and
// p(c) r(c) <= top2 max(r) for every other c. Value asks it of the row's
// margin, top1 / top2 > max(r) / min(r), with room for rounding (marginSlack),
// so that the rows it holds for are a prefix of each class's rows in order of
// margin: their utility is a running sum kept from the start (cum), found by a
// binary search, and only the rows after the prefix are scanned. Where the
// live mix is near the validation split's (r near 1) that is most rows, and a
// Mix costs K binary searches and the scan of the rows whose two largest
// estimates are close (BenchmarkAnswerValue, BenchmarkAnswerValueBundled);
// under a ratio that is not positive and finite every row is scanned. The
// value is the full scan's, summed in the same order
// (TestAnswerValueFastPathIsExact).
func (a *AnswerValue) Value(prior, ratio []float64) float64 {
	bound := math.Inf(1) // no row is taken by its margin
	if rmin, rmax, ok := ratioBounds(ratio[:len(a.n)]); ok && rmin >= minMarginRatio && rmax <= 1/minMarginRatio {
		bound = rmax / rmin * (1 + marginSlack)
	}
	v := 0.0
	for y, margins := range a.margin {
		if a.n[y] == 0 {
			continue
		}
		// The rows past the bound: a prefix, margins decreasing.
		j, _ := slices.BinarySearchFunc(margins, bound, func(m, b float64) int {
			if m > b {
				return -1
			}
			return 1
		})
		s := a.cum[y][j]
		k := len(a.n)
		for p := a.sorted[y][j*k:]; len(p) >= k; p = p[k:] {
			best, bc := math.Inf(-1), 0
			for c, x := range p[:k] {
				if x := x * ratio[c]; x > best {
					best, bc = x, c
				}
			}
			s += a.w[y][bc]
		}
		v += prior[y] * s / float64(a.n[y])
	}
	return v
}

// marginSlack is the room Value leaves for rounding: a row is taken by its
// margin m = fl(top1 / top2) when m > fl(max(r) / min(r)) * (1 + marginSlack).
// Each rounding moves a value by a factor of at most 1 + 2^-53, so then
// top1 * min(r) > top2 * max(r) * (1 + 2^-52) in exact arithmetic, and the
// products rounded to float64 compare the same way, strictly: fl(top1 r(top))
// >= fl(top1 min(r)) > fl(top2 max(r)) >= fl(p(c) r(c)) for every other c. The
// relative bound on rounding holds for normal, finite numbers: rows whose top1
// is outside [minMarginTop, maxMarginTop], and ratios outside [minMarginRatio,
// 1/minMarginRatio], take the full scan, which keeps the products compared
// within [1e-250, 1e250], far from the subnormal range and from overflow (two
// products that overflow are both +Inf, and the full scan keeps the first).
const (
	marginSlack    = 1e-12
	minMarginTop   = 1e-150
	maxMarginTop   = 1e150
	minMarginRatio = 1e-100
)

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
