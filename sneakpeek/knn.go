package sneakpeek

import (
	"fmt"
	"math"
	"sort"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/manifest"
)

// maxK bounds the number of neighbours so the search state fits on the stack.
const maxK = 64

// KNN is the paper's estimator: a k-nearest-neighbour vote over a labelled
// reference set, turned into a Dirichlet posterior with concentration alpha.
type KNN struct {
	name     string
	feat     Features
	k        int
	d        int
	ref      []float32 // n*d reference features, dimensions in order perm
	perm     []int     // feature dimensions by decreasing variance over the reference set
	labels   []int32
	alpha    []float64
	alphaSum float64
	buf      *scratch
}

func newKNN(app *manifest.App, e manifest.Estimator, f Features) (Estimator, error) {
	set, err := dataset.Read(app.Path(e.File))
	if err != nil {
		return nil, err
	}
	return NewKNN(e.Name, f, set, e.K, app.Alpha())
}

// NewKNN returns a kNN estimator over ref (rows are features of f) with k
// neighbours and Dirichlet concentration alpha (one value per class). It returns
// an error wrapping ErrParams when the shapes disagree (ref's Values and Labels
// with its N and D included), an alpha is negative or not finite, a reference
// value is NaN or infinite (as dataset.Read refuses in a file; the row could
// never be a neighbour), or a label is outside [0, len(alpha)).
func NewKNN(name string, f Features, ref *dataset.Set, k int, alpha []float64) (*KNN, error) {
	if ref.D != f.Dim() {
		return nil, fmt.Errorf("%w: reference rows have %d values, want %d (features %q of an input of %d values)",
			ErrParams, ref.D, f.Dim(), f.Spec(), f.InputSize())
	}
	if ref.D <= 0 || ref.N < 0 || len(ref.Values)/ref.D != ref.N || len(ref.Values)%ref.D != 0 {
		return nil, fmt.Errorf("%w: %d values for %d reference rows of %d", ErrParams, len(ref.Values), ref.N, ref.D)
	}
	if len(ref.Labels) != ref.N {
		return nil, fmt.Errorf("%w: %d labels for %d reference rows", ErrParams, len(ref.Labels), ref.N)
	}
	if k <= 0 || k > maxK || k > ref.N {
		return nil, fmt.Errorf("%w: k = %d with %d reference rows (max %d)", ErrParams, k, ref.N, maxK)
	}
	sum := 0.0
	for _, a := range alpha {
		if !(a >= 0) || math.IsInf(a, 1) {
			return nil, fmt.Errorf("%w: alpha %v (want finite, non-negative values)", ErrParams, alpha)
		}
		sum += a
	}
	for i, y := range ref.Labels {
		if y < 0 || int(y) >= len(alpha) {
			return nil, fmt.Errorf("%w: reference row %d has label %d, want [0, %d)", ErrParams, i, y, len(alpha))
		}
	}
	for i, v := range ref.Values {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("%w: reference row %d, value %d is %v; reference features must be finite",
				ErrParams, i/ref.D, i%ref.D, v)
		}
	}
	m := &KNN{name: name, feat: f, k: k, d: ref.D, labels: ref.Labels,
		alpha: append([]float64(nil), alpha...), alphaSum: sum, buf: newScratch(2 * f.Dim())}
	// Distances do not depend on the order of dimensions, but the partial-distance
	// cut-off (partialDist) fires sooner when the dimensions that differ most come
	// first: store the reference rows with their dimensions by decreasing variance.
	m.perm = varianceOrder(ref)
	m.ref = make([]float32, len(ref.Values))
	for r := 0; r < ref.N; r++ {
		src, dst := ref.Row(r), m.ref[r*ref.D:(r+1)*ref.D]
		for j, p := range m.perm {
			dst[j] = src[p]
		}
	}
	return m, nil
}

// varianceOrder returns the dimensions of s sorted by decreasing variance (ties:
// lower dimension first).
func varianceOrder(s *dataset.Set) []int {
	mean, vr := make([]float64, s.D), make([]float64, s.D)
	for r := 0; r < s.N; r++ {
		for j, v := range s.Row(r) {
			mean[j] += float64(v)
		}
	}
	for j := range mean {
		mean[j] /= float64(max(s.N, 1))
	}
	for r := 0; r < s.N; r++ {
		for j, v := range s.Row(r) {
			d := float64(v) - mean[j]
			vr[j] += d * d
		}
	}
	perm := make([]int, s.D)
	for j := range perm {
		perm[j] = j
	}
	sort.SliceStable(perm, func(a, b int) bool { return vr[perm[a]] > vr[perm[b]] })
	return perm
}

// Name implements Estimator.
func (m *KNN) Name() string { return m.name }

// Estimate implements Estimator.
func (m *KNN) Estimate(input []float32, dst []float64) {
	b := m.buf.get()
	f, q := (*b)[:m.d], (*b)[m.d:]
	m.feat.Apply(input, f)
	for j, p := range m.perm {
		q[j] = f[p]
	}
	var bestD [maxK]float32
	var bestI [maxK]int32
	n := 0 // neighbours found so far (< k only during the first k rows)
	worst := float32(math.Inf(1))
	d := m.d
	for r := 0; r*d < len(m.ref); r++ {
		row := m.ref[r*d : r*d+d]
		dist, ok := partialDist(q, row, worst)
		if !ok {
			continue
		}
		// Insert (dist, r) keeping bestD sorted ascending; equal distances keep the
		// earlier row first.
		j := min(n, m.k-1)
		for j > 0 && bestD[j-1] > dist {
			bestD[j], bestI[j] = bestD[j-1], bestI[j-1]
			j--
		}
		bestD[j], bestI[j] = dist, int32(r)
		if n < m.k {
			n++
		}
		if n == m.k {
			worst = bestD[m.k-1]
		}
	}
	m.buf.put(b)
	for y := range dst {
		dst[y] = m.alpha[y]
	}
	for _, r := range bestI[:n] {
		dst[m.labels[r]]++
	}
	tot := float64(n) + m.alphaSum
	for y := range dst {
		dst[y] /= tot
	}
}

// partialDist returns the squared distance between q and row, or false as soon as
// the running sum reaches limit (the row cannot enter the neighbour list: ties go
// to the earlier row).
func partialDist(q, row []float32, limit float32) (float32, bool) {
	row = row[:len(q)]
	var s float32
	i := 0
	for ; i+8 <= len(q); i += 8 {
		d0, d1, d2, d3 := q[i]-row[i], q[i+1]-row[i+1], q[i+2]-row[i+2], q[i+3]-row[i+3]
		d4, d5, d6, d7 := q[i+4]-row[i+4], q[i+5]-row[i+5], q[i+6]-row[i+6], q[i+7]-row[i+7]
		s += d0*d0 + d1*d1 + d2*d2 + d3*d3 + d4*d4 + d5*d5 + d6*d6 + d7*d7
		if s >= limit {
			return s, false
		}
	}
	for ; i < len(q); i++ {
		d := q[i] - row[i]
		s += d * d
	}
	return s, s < limit
}
