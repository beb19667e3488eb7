package sneakpeek

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"

	"github.com/sneakgate/sneakgate/manifest"
)

// Difficulty estimates, per request, the probability that each model variant
// answers it correctly: per-sample difficulty, beyond what the class estimate
// says. The class-based expected accuracy sum_y p(y) recall_m(y) gives every
// request of the same estimated class the same chance; two shirts differ, and
// knowing which one a cheap variant gets right is worth more than knowing the
// class (docs/method.md, "Per-sample difficulty").
//
// The model is one binary logistic regression per variant over the request's
// features (the transform the manifest names) followed by the class estimate
// p of the application's estimator and log p:
//
//	c_m(x) = sigmoid(w_m . standardise([features(x), p, log p]) + b_m)
//
// It is trained on each variant's correctness on labelled rows
// (TrainDifficulty). Like the estimators, it is safe for concurrent use and does
// not allocate in steady state.
type Difficulty struct {
	feat     Features
	variants []string
	k, d     int // classes; the full standardised vector's length
	mean     []float32
	inv      []float32
	w        []float32 // len(variants) x d; the shared form: one row, the score
	b        []float64
	slope    []float64 // the shared form's per-variant slopes; nil: per-variant form
	cb, cs   []float64 // the shared form's class terms, len(variants) x k; nil: none
	gref     int       // the gap scale's reference variant (GapScale)
	gscale   []float64 // the gap scale, len(variants) x k; nil: none
	gcenter  []float64 // its centres, len(variants) x k
	buf      *scratch
}

// DifficultyParams is the JSON parameter file of a Difficulty model.
type DifficultyParams struct {
	// Features is the transform applied to the request input.
	Features string `json:"features"`
	// Classes is the class count K of the appended class estimate.
	Classes int `json:"classes"`
	// Variants names the variants, in the order of Weights and Bias.
	Variants []string `json:"variants"`
	// Mean and Scale standardise [features, p, log p] (features' Dim + 2K values).
	Mean  []float64 `json:"mean"`
	Scale []float64 `json:"scale"`
	// Weights[m] and Bias[m] are variant m's logistic regression (the
	// per-variant form, Slope empty). In the shared form Weights holds one row,
	// the shared difficulty score s = Weights[0] . z, and variant m's
	// correctness is sigmoid(Bias[m] + Slope[m] s).
	Weights [][]float64 `json:"weights"`
	Bias    []float64   `json:"bias"`
	Slope   []float64   `json:"slope,omitempty"`
	// ClassBias[m] and ClassSlope[m] (K values each, or both absent) are the
	// shared form's class terms (FormSharedClass): variant m's correctness is
	// sigmoid(Bias[m] + Slope[m] s + sum_y p(y) (ClassBias[m][y] +
	// ClassSlope[m][y] s)), so the gap between two variants may depend on the
	// estimated class as well as on s.
	ClassBias  [][]float64 `json:"class_bias,omitempty"`
	ClassSlope [][]float64 `json:"class_slope,omitempty"`
	// GapRef, GapScale and GapCenter (all or none) scale the gaps between
	// the variants' estimates (difficulty_gap.go, GapNone): variant m's
	// estimate c_m becomes c_ref + g + kappa (c_m - c_ref - g), ref the
	// variant GapRef names, kappa GapScale[m] in [0, 1] and g GapCenter[m]
	// (each one value, or one per class: that of the class the estimate
	// finds most likely).
	GapRef    string      `json:"gap_ref,omitempty"`
	GapScale  [][]float64 `json:"gap_scale,omitempty"`
	GapCenter [][]float64 `json:"gap_center,omitempty"`
}

// Difficulty model forms (TrainDifficulty).
const (
	// FormPerVariant fits one logistic regression per variant. Each variant's
	// correctness is ranked well (AUC), but the difference between two
	// variants on one input is the difference of two noisy estimates: a
	// variant that is worse on average can come out on top for inputs where it
	// is not, and a scheduler with time to spare then serves them with it.
	FormPerVariant = "per-variant"
	// FormShared fits one difficulty score s(x) for all variants (a pooled
	// logistic regression with an intercept per variant), then per variant a
	// curve sigmoid(a_m + b_m s). Variants keep their order on every input
	// except where their curves cross, which a steeper curve does only at the
	// extremes of s, so no input is moved to a worse variant by noise; the
	// gap between two variants still grows and shrinks with the input's
	// difficulty, which is what the price of engine time trades against.
	FormShared = "shared"
	// FormSharedClass trains the shared form with class terms (what
	// TrainDifficulty accepts; the model's Form is FormShared, and its
	// ClassTerms says it has them): variant m's curve is
	//
	//	c_m(x) = sigmoid(a_m + b_m s(x) + sum_y p(y) (g_my + h_my s(x)))
	//
	// over the class estimate p. In the shared form the gap between two
	// variants depends on s alone, so where the hardest inputs of one class
	// gain nothing from the better variant while those of the others do
	// (fashion's shirts on resnet-m against resnet-s), its estimates say they
	// all gain alike; the class terms let the gap differ by class. They are
	// fitted after s and the curves, with a ridge penalty chosen by
	// cross-validation on the training rows, so with too few rows of a class
	// its terms stay near 0.
	FormSharedClass = "shared-class"
)

// logFloor bounds log p below, so a zero probability is a finite feature.
const logFloor = 1e-6

// LoadDifficulty reads the difficulty model the manifest declares (nil, nil when
// it declares none). The model's variants must be the manifest's, in order.
// Its errors name the application and the file.
func LoadDifficulty(app *manifest.App) (*Difficulty, error) {
	if app.Difficulty == nil {
		return nil, nil
	}
	where := fmt.Sprintf("difficulty model of %s (%s)", app.Name, app.Path(app.Difficulty.File))
	raw, err := os.ReadFile(app.Path(app.Difficulty.File))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	var p DifficultyParams
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrParams, where, err)
	}
	d, err := NewDifficulty(&p, app.InputSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if d.k != app.K() {
		return nil, fmt.Errorf("%w: %s: %d classes, the app has %d", ErrParams, where, d.k, app.K())
	}
	names := make([]string, len(app.Variants))
	for i, v := range app.Variants {
		names[i] = v.Name
	}
	if !slices.Equal(names, d.variants) {
		return nil, fmt.Errorf("%w: %s: variants %v, the manifest has %v", ErrParams, where, d.variants, names)
	}
	if f := app.Difficulty.Form; f != "" && f != d.Form() {
		return nil, fmt.Errorf("%w: %s: a %s model, the manifest says %s", ErrParams, where, d.Form(), f)
	}
	return d, nil
}

// NewDifficulty builds the model p describes for request inputs of inputSize
// values. It returns an error wrapping ErrParams or ErrFeatures when the shapes
// disagree, a scale is not positive or a parameter is not finite.
func NewDifficulty(p *DifficultyParams, inputSize int) (*Difficulty, error) {
	f, err := ParseFeatures(p.Features, inputSize)
	if err != nil {
		return nil, err
	}
	k, nm := p.Classes, len(p.Variants)
	// The means hold the features and 2 values per class: a class count beyond
	// half of them is refused before 2*k, which may overflow (to a length the
	// means have), is computed.
	if k > len(p.Mean)/2 {
		return nil, fmt.Errorf("%w: difficulty classes %d: mean has %d values, want the %d of features %q and 2 per class",
			ErrParams, k, len(p.Mean), f.Dim(), f.Spec())
	}
	d := f.Dim() + 2*k
	rows := nm
	if len(p.Slope) > 0 {
		rows = 1
	}
	if k >= 2 && (len(p.Mean) != d || len(p.Scale) != d) {
		return nil, fmt.Errorf("%w: difficulty mean and scale have %d and %d values, want %d: features %q of an input of %d values give %d, and 2 per class (%d classes)",
			ErrParams, len(p.Mean), len(p.Scale), d, f.Spec(), f.InputSize(), f.Dim(), k)
	}
	if k < 2 || nm < 1 || len(p.Mean) != d || len(p.Scale) != d || len(p.Weights) != rows || len(p.Bias) != nm ||
		(len(p.Slope) > 0 && len(p.Slope) != nm) {
		return nil, fmt.Errorf("%w: difficulty shapes: classes %d variants %d dim %d mean %d scale %d weights %d bias %d slope %d",
			ErrParams, k, nm, d, len(p.Mean), len(p.Scale), len(p.Weights), len(p.Bias), len(p.Slope))
	}
	for m, v := range p.Slope {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("%w: difficulty slope[%d] = %v", ErrParams, m, v)
		}
	}
	var cb, cs []float64
	if len(p.ClassBias) > 0 || len(p.ClassSlope) > 0 {
		if len(p.Slope) == 0 || len(p.ClassBias) != nm || len(p.ClassSlope) != nm {
			return nil, fmt.Errorf("%w: difficulty class terms: %d and %d rows, want %d, in the shared form",
				ErrParams, len(p.ClassBias), len(p.ClassSlope), nm)
		}
		for m := range nm {
			if len(p.ClassBias[m]) != k || len(p.ClassSlope[m]) != k {
				return nil, fmt.Errorf("%w: difficulty class terms of variant %d: %d and %d values, want %d",
					ErrParams, m, len(p.ClassBias[m]), len(p.ClassSlope[m]), k)
			}
			for y := range k {
				g, h := p.ClassBias[m][y], p.ClassSlope[m][y]
				if math.IsNaN(g) || math.IsInf(g, 0) || math.IsNaN(h) || math.IsInf(h, 0) {
					return nil, fmt.Errorf("%w: difficulty class terms [%d][%d] = %v, %v", ErrParams, m, y, g, h)
				}
			}
			cb, cs = append(cb, p.ClassBias[m]...), append(cs, p.ClassSlope[m]...)
		}
	}
	gref, gscale, gcenter, err := gapScales(p, k)
	if err != nil {
		return nil, err
	}
	mean, inv, w, err := standardisedLinear("difficulty ", p.Mean, p.Scale, p.Weights, d)
	if err != nil {
		return nil, err
	}
	if err := finiteBias("difficulty ", p.Bias); err != nil {
		return nil, err
	}
	var slope []float64
	if len(p.Slope) > 0 {
		slope = slices.Clone(p.Slope)
	}
	return &Difficulty{feat: f, variants: slices.Clone(p.Variants), k: k, d: d, mean: mean,
		inv: inv, w: w, b: slices.Clone(p.Bias), slope: slope, cb: cb, cs: cs, gref: gref, gscale: gscale, gcenter: gcenter,
		buf: newScratch(d)}, nil
}

// ClassTerms reports whether the model is the shared form with class terms
// (FormSharedClass).
func (m *Difficulty) ClassTerms() bool { return m.cb != nil }

// Form is the model's form: FormShared or FormPerVariant.
func (m *Difficulty) Form() string {
	if m.slope != nil {
		return FormShared
	}
	return FormPerVariant
}

// Variants returns the variant names, in the order of Correctness's output.
func (m *Difficulty) Variants() []string { return m.variants }

// vector writes the standardised [features(x), p, log p] into z (len d).
func (m *Difficulty) vector(input []float32, p []float64, z []float32) {
	fd := m.feat.Dim()
	m.feat.Apply(input, z[:fd])
	for y, v := range p {
		z[fd+y] = float32(v)
		z[fd+m.k+y] = float32(math.Log(max(v, logFloor)))
	}
	for i := range z {
		z[i] = (z[i] - m.mean[i]) * m.inv[i]
	}
}

// Correctness writes into dst (one value per variant) the probability that each
// variant answers the request input correctly, given the class estimate p of
// the application's estimator (len K), with the gap scale applied where the
// model has one.
func (m *Difficulty) Correctness(input []float32, p []float64, dst []float64) {
	m.correctness(input, p, dst)
	if m.gscale != nil {
		m.scaleGaps(p, dst)
	}
}

// GapScaled reports whether the model scales the gaps between its variants'
// estimates (DifficultyParams.GapScale).
func (m *Difficulty) GapScaled() bool { return m.gscale != nil }

func (m *Difficulty) correctness(input []float32, p []float64, dst []float64) {
	b := m.buf.get()
	z := *b
	m.vector(input, p, z)
	if m.slope != nil {
		w := m.w[:len(z)]
		var s float32
		for i, x := range z {
			s += w[i] * x
		}
		m.buf.put(b)
		sf := float64(s)
		for v := range m.variants {
			t := m.b[v] + m.slope[v]*sf
			if m.cb != nil {
				cb, cs := m.cb[v*m.k:(v+1)*m.k], m.cs[v*m.k:(v+1)*m.k]
				for y, py := range p[:m.k] {
					t += py * (cb[y] + cs[y]*sf)
				}
			}
			dst[v] = sigmoid(t)
		}
		return
	}
	for v := range m.variants {
		w := m.w[v*m.d : (v+1)*m.d]
		w = w[:len(z)]
		var s float32
		for i, x := range z {
			s += w[i] * x
		}
		dst[v] = sigmoid(float64(s) + m.b[v])
	}
	m.buf.put(b)
}

func sigmoid(x float64) float64 {
	if x >= 0 {
		return 1 / (1 + math.Exp(-x))
	}
	e := math.Exp(x)
	return e / (1 + e)
}

// DifficultyRow is one labelled training row: the request input, the class
// estimate of the application's estimator for it, and whether each variant
// answered it correctly.
type DifficultyRow struct {
	Input    []float32
	Estimate []float64
	Correct  []bool
}

// TrainDifficulty fits the difficulty model of variants, in form (FormShared,
// FormSharedClass or FormPerVariant), over features (a transform spec for inputs of inputSize
// values) on rows, by Newton's method on the L2-regularised log-likelihood of
// the variants' correctness (lambda is the penalty per row; 1e-3 is a good
// default). Deterministic. A row whose input or estimate holds a NaN or an
// infinity is an error wrapping ErrParams that names it.
func TrainDifficulty(form, features string, inputSize, k int, variants []string, rows []DifficultyRow, lambda float64) (*DifficultyParams, error) {
	if form != FormShared && form != FormSharedClass && form != FormPerVariant {
		return nil, fmt.Errorf("%w: difficulty form %q: want %q, %q or %q", ErrParams, form, FormShared, FormSharedClass, FormPerVariant)
	}
	f, err := ParseFeatures(features, inputSize)
	if err != nil {
		return nil, err
	}
	n, d := len(rows), f.Dim()+2*k
	if n < 2 {
		return nil, fmt.Errorf("%w: difficulty: %d training rows", ErrParams, n)
	}
	p := &DifficultyParams{Features: features, Classes: k, Variants: slices.Clone(variants),
		Mean: make([]float64, d), Scale: make([]float64, d)}
	// Raw vectors, then their standardisation.
	raw := make([]float64, n*d)
	z := make([]float32, d)
	id := &Difficulty{feat: f, k: k, d: d, mean: make([]float32, d), inv: make([]float32, d)}
	for i := range id.inv {
		id.inv[i] = 1
	}
	for i, r := range rows {
		if len(r.Input) != inputSize || len(r.Estimate) != k || len(r.Correct) != len(variants) {
			return nil, fmt.Errorf("%w: difficulty: row %d has %d inputs, %d estimates, %d labels; want %d, %d, %d",
				ErrParams, i, len(r.Input), len(r.Estimate), len(r.Correct), inputSize, k, len(variants))
		}
		for j, v := range r.Input {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("%w: difficulty: row %d, input %d is %v; training rows must be finite", ErrParams, i, j, v)
			}
		}
		for j, v := range r.Estimate {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("%w: difficulty: row %d, estimate %d is %v; training rows must be finite", ErrParams, i, j, v)
			}
		}
		id.vector(r.Input, r.Estimate, z)
		for j, x := range z {
			raw[i*d+j] = float64(x)
		}
	}
	for j := range d {
		var s, ss float64
		for i := range n {
			s += raw[i*d+j]
		}
		mu := s / float64(n)
		for i := range n {
			ss += (raw[i*d+j] - mu) * (raw[i*d+j] - mu)
		}
		p.Mean[j], p.Scale[j] = mu, math.Sqrt(ss/float64(n))
		if p.Scale[j] < 1e-6 {
			p.Scale[j] = 1 // a constant feature: leave it, its weight stays 0
		}
		for i := range n {
			raw[i*d+j] = (raw[i*d+j] - mu) / p.Scale[j]
		}
	}
	if form == FormShared || form == FormSharedClass {
		s := fitShared(p, raw, n, d, rows, lambda)
		if form == FormSharedClass {
			fitClassTerms(p, s, rows, lambda)
		}
		return p, nil
	}
	for v := range variants {
		y := make([]float64, n)
		for i, r := range rows {
			if r.Correct[v] {
				y[i] = 1
			}
		}
		w, b := fitBinaryLogistic(raw, n, d, y, lambda)
		p.Weights = append(p.Weights, w)
		p.Bias = append(p.Bias, b)
	}
	return p, nil
}

// fitShared fits the shared form on the standardised rows raw (n x d): first a
// pooled logistic regression of every (row, variant) pair's correctness on the
// row's vector and an intercept per variant, whose weights are the shared
// score s; then, per variant, a logistic regression of its correctness on s
// alone (its intercept and slope). It returns the rows' scores s.
func fitShared(p *DifficultyParams, raw []float64, n, d int, rows []DifficultyRow, lambda float64) []float64 {
	nv := len(p.Variants)
	// Pooled: the vector, then nv-1 indicators (variant 0's intercept is the bias).
	pd := d + nv - 1
	x := make([]float64, n*nv*pd)
	y := make([]float64, n*nv)
	for v := range nv {
		for i, r := range rows {
			j := v*n + i
			copy(x[j*pd:j*pd+d], raw[i*d:(i+1)*d])
			if v > 0 {
				x[j*pd+d+v-1] = 1
			}
			if r.Correct[v] {
				y[j] = 1
			}
		}
	}
	w, _ := fitBinaryLogistic(x, n*nv, pd, y, lambda)
	p.Weights = [][]float64{w[:d:d]}
	s := make([]float64, n)
	for i := range n {
		for j, wj := range p.Weights[0] {
			s[i] += wj * raw[i*d+j]
		}
	}
	for v := range nv {
		for i, r := range rows {
			y[i] = 0
			if r.Correct[v] {
				y[i] = 1
			}
		}
		a, b := fitBinaryLogistic(s, n, 1, y[:n], lambda)
		p.Slope = append(p.Slope, a[0])
		p.Bias = append(p.Bias, b)
	}
	return s
}

// classRidges are the ridge penalties per row that fitClassTerms chooses
// among by cross-validation.
var classRidges = []float64{1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1}

// classFolds is the number of folds of fitClassTerms's cross-validation.
const classFolds = 3

// fitClassTerms refits each variant's curve of the shared form with class
// terms: a logistic regression of its correctness on [s, p, p s] (p the rows'
// class estimates, s their scores), whose intercept and first weight replace
// p.Bias[m] and p.Slope[m] and whose other weights are p.ClassBias[m] and
// p.ClassSlope[m]. The weight of s is penalised by lambda, the class terms by
// the ridge of classRidges with the smallest log loss summed over the variants
// in a cross-validation over rows (folds by row index, deterministic), so
// that they stay small where the rows do not support them.
func fitClassTerms(p *DifficultyParams, s []float64, rows []DifficultyRow, lambda float64) {
	n, k, nv := len(rows), p.Classes, len(p.Variants)
	cd := 1 + 2*k
	x := make([]float64, n*cd)
	for i, r := range rows {
		xi := x[i*cd : (i+1)*cd]
		xi[0] = s[i]
		for y, py := range r.Estimate {
			xi[1+y], xi[1+k+y] = py, py*s[i]
		}
	}
	labels := make([][]float64, nv)
	correct := make([][]bool, nv)
	for v := range nv {
		labels[v], correct[v] = make([]float64, n), make([]bool, n)
		for i, r := range rows {
			if r.Correct[v] {
				labels[v][i], correct[v][i] = 1, true
			}
		}
	}
	pen := func(ridge float64) []float64 {
		q := make([]float64, cd)
		q[0] = lambda
		for j := 1; j < cd; j++ {
			q[j] = ridge
		}
		return q
	}
	ridge := classRidges[len(classRidges)-1]
	if n >= 2*classFolds {
		// The folds (rows by index modulo classFolds), laid out once: each
		// fold's training rows and, per variant, their labels.
		type fold struct {
			tx   []float64
			ty   [][]float64
			held []int
		}
		folds := make([]fold, classFolds)
		for f := range folds {
			fd := &folds[f]
			fd.ty = make([][]float64, nv)
			for i := range n {
				if i%classFolds == f {
					fd.held = append(fd.held, i)
					continue
				}
				fd.tx = append(fd.tx, x[i*cd:(i+1)*cd]...)
				for v := range nv {
					fd.ty[v] = append(fd.ty[v], labels[v][i])
				}
			}
		}
		// Per ridge, every row scored by the fit on the other folds; the
		// ridge of the smallest held-out log loss (LogLoss) is kept.
		scores := make([][]float64, nv)
		for v := range scores {
			scores[v] = make([]float64, n)
		}
		best := math.Inf(1)
		for _, rg := range classRidges {
			for _, fd := range folds {
				for v := range nv {
					w, b := fitBinaryLogisticPen(fd.tx, len(fd.ty[v]), cd, fd.ty[v], pen(rg))
					for _, i := range fd.held {
						t := b
						for a, wa := range w {
							t += wa * x[i*cd+a]
						}
						scores[v][i] = sigmoid(t)
					}
				}
			}
			if loss := LogLoss(scores, correct); loss < best {
				best, ridge = loss, rg
			}
		}
	}
	p.ClassBias, p.ClassSlope = make([][]float64, nv), make([][]float64, nv)
	for v := range nv {
		w, b := fitBinaryLogisticPen(x, n, cd, labels[v], pen(ridge))
		p.Bias[v], p.Slope[v] = b, w[0]
		p.ClassBias[v], p.ClassSlope[v] = slices.Clone(w[1:1+k]), slices.Clone(w[1+k:])
	}
}

// fitBinaryLogistic fits sigmoid(w.x + b) to y by Newton's method with an L2
// penalty lambda*n/2*|w|^2 (the bias is not penalised). x is n x d, row-major.
func fitBinaryLogistic(x []float64, n, d int, y []float64, lambda float64) ([]float64, float64) {
	pen := make([]float64, d)
	for a := range pen {
		pen[a] = lambda
	}
	return fitBinaryLogisticPen(x, n, d, y, pen)
}

// fitBinaryLogisticPen is fitBinaryLogistic with a penalty per weight:
// sum_a pen[a]*n/2*w_a^2.
func fitBinaryLogisticPen(x []float64, n, d int, y []float64, pen []float64) ([]float64, float64) {
	dim := d + 1 // the bias is the last coordinate
	theta := make([]float64, dim)
	g := make([]float64, dim)
	h := make([]float64, dim*dim)
	row := make([]float64, dim)
	for range 50 {
		clear(g)
		clear(h)
		for i := range n {
			copy(row, x[i*d:(i+1)*d])
			row[d] = 1
			s := 0.0
			for j, v := range row {
				s += theta[j] * v
			}
			mu := sigmoid(s)
			r := mu - y[i]
			wgt := max(mu*(1-mu), 1e-9)
			for a, va := range row {
				g[a] += r * va
				ha := h[a*dim:]
				for b := a; b < dim; b++ {
					ha[b] += wgt * va * row[b]
				}
			}
		}
		for a := range d {
			reg := pen[a] * float64(n)
			g[a] += reg * theta[a]
			h[a*dim+a] += reg
		}
		for a := range dim {
			for b := 0; b < a; b++ {
				h[a*dim+b] = h[b*dim+a]
			}
		}
		step, ok := solveSPD(h, g, dim)
		if !ok {
			break
		}
		norm := 0.0
		for a := range dim {
			theta[a] -= step[a]
			norm = max(norm, math.Abs(step[a]))
		}
		if norm < 1e-8 {
			break
		}
	}
	return theta[:d:d], theta[d]
}

// solveSPD solves h x = g for a symmetric positive definite h (n x n) by
// Cholesky; ok is false when h is not positive definite. h is overwritten.
func solveSPD(h, g []float64, n int) ([]float64, bool) {
	for j := range n {
		s := h[j*n+j]
		for k := range j {
			s -= h[j*n+k] * h[j*n+k]
		}
		if !(s > 0) {
			return nil, false
		}
		l := math.Sqrt(s)
		h[j*n+j] = l
		for i := j + 1; i < n; i++ {
			t := h[i*n+j]
			for k := range j {
				t -= h[i*n+k] * h[j*n+k]
			}
			h[i*n+j] = t / l
		}
	}
	x := slices.Clone(g)
	for i := range n {
		for k := range i {
			x[i] -= h[i*n+k] * x[k]
		}
		x[i] /= h[i*n+i]
	}
	for i := n - 1; i >= 0; i-- {
		for k := i + 1; k < n; k++ {
			x[i] -= h[k*n+i] * x[k]
		}
		x[i] /= h[i*n+i]
	}
	return x, true
}

// AUC is the area under the ROC curve of scores for the binary labels: the
// probability that a random positive scores above a random negative (ties count
// half). It is NaN when either class is missing.
func AUC(scores []float64, labels []bool) float64 {
	idx := make([]int, len(scores))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case scores[a] < scores[b]:
			return -1
		case scores[a] > scores[b]:
			return 1
		}
		return 0
	})
	// Mann-Whitney U with mid-ranks for ties.
	var pos, neg, rankSum float64
	for i := 0; i < len(idx); {
		j := i
		for j < len(idx) && scores[idx[j]] == scores[idx[i]] {
			j++
		}
		mid := float64(i+j+1) / 2 // ranks i+1..j
		for _, t := range idx[i:j] {
			if labels[t] {
				pos++
				rankSum += mid
			} else {
				neg++
			}
		}
		i = j
	}
	if pos == 0 || neg == 0 {
		return math.NaN()
	}
	return (rankSum - pos*(pos+1)/2) / (pos * neg)
}

// LogLoss is the mean log loss per row of the estimates scores[v][i] of
// whether variant v answers row i correctly (correct[v][i]), summed over the
// variants: the held-out measure that decides whether the shared form keeps
// its class terms (FormSharedClass). Estimates are clamped to [1e-12, 1-1e-12].
func LogLoss(scores [][]float64, correct [][]bool) float64 {
	total := 0.0
	for v, sv := range scores {
		l := 0.0
		for i, c := range sv {
			c = min(max(c, 1e-12), 1-1e-12)
			if correct[v][i] {
				l -= math.Log(c)
			} else {
				l -= math.Log(1 - c)
			}
		}
		if len(sv) > 0 {
			total += l / float64(len(sv))
		}
	}
	return total
}

// RankingCheck is what choosing a variant per row on estimated correctness
// gives when engine time is free, against serving every row with the most
// accurate variant: the check that chooses the difficulty model's form
// (CheckRanking).
type RankingCheck struct {
	// Top is the most accurate variant on the rows; Accuracy and TopAccuracy
	// are the accuracy of the choice on the estimates and of Top alone.
	Top                   int
	Accuracy, TopAccuracy float64
	// Moved counts the rows whose estimated best variant is not Top.
	Moved int
	// Better counts the rows the choice gets right and Top wrong; Worse the
	// reverse. Z is McNemar's statistic (Better - Worse) / sqrt(Better + Worse)
	// (0 when both are 0).
	Better, Worse int
	Z             float64
}

// NoisyZ is the level below which RankingCheck.Z says, beyond chance (two-sided
// 5%), that the estimates rank the variants worse than their accuracy does.
const NoisyZ = -1.96

// Noisy reports whether choosing on the estimates is worse than Top alone
// beyond chance: the per-variant form's estimates then move inputs to worse
// variants by noise, and the shared form should be used instead.
func (c RankingCheck) Noisy() bool { return c.Z < NoisyZ }

// CheckRanking compares, on held-out rows, choosing per row the variant of the
// highest estimated correctness (scores[v][i]; ties to the more accurate) with
// serving every row with the most accurate variant (correct[v][i] says whether
// variant v answered row i correctly).
func CheckRanking(scores [][]float64, correct [][]bool) RankingCheck {
	nv := len(correct)
	if nv == 0 || len(scores) != nv {
		return RankingCheck{}
	}
	n := len(correct[0])
	c := RankingCheck{}
	var topRight int
	c.Top, topRight = mostAccurate(correct)
	right := 0
	for i := range n {
		best := c.Top
		for v := range nv {
			if scores[v][i] > scores[best][i] {
				best = v
			}
		}
		if best != c.Top {
			c.Moved++
		}
		if correct[best][i] {
			right++
		}
		switch {
		case correct[best][i] && !correct[c.Top][i]:
			c.Better++
		case !correct[best][i] && correct[c.Top][i]:
			c.Worse++
		}
	}
	if n > 0 {
		c.Accuracy, c.TopAccuracy = float64(right)/float64(n), float64(topRight)/float64(n)
	}
	c.Z = McNemarZ(c.Better, c.Worse)
	return c
}

// mostAccurate returns the variant that answered the most rows correctly
// (correct[v][i]; the first on ties) and how many it answered so.
func mostAccurate(correct [][]bool) (top, right int) {
	for v, cv := range correct {
		n := 0
		for _, ok := range cv {
			if ok {
				n++
			}
		}
		if v == 0 || n > right {
			top, right = v, n
		}
	}
	return top, right
}

// McNemarZ is McNemar's statistic for two variants on the same rows: (ab -
// ba) / sqrt(ab + ba), ab the rows only the first answered correctly, ba those
// only the second; 0 when both are 0.
func McNemarZ(ab, ba int) float64 {
	if ab+ba == 0 {
		return 0
	}
	return float64(ab-ba) / math.Sqrt(float64(ab+ba))
}

// ClassGap is, for the rows of one true class, the gap in correctness between
// two variants that the estimates predict and the one the rows realise
// (CheckGaps).
type ClassGap struct {
	Class int
	// N counts the rows: those of the class whose predicted gap is among the
	// largest fraction asked for.
	N int
	// Pred is the mean predicted gap c_hi - c_lo over the rows, Real the mean
	// realised one (correct_hi - correct_lo), SE the standard error of Real.
	Pred, Real, SE float64
}

// CheckGaps compares predicted with realised gaps between variants hi and lo
// by true class, on held-out rows: for each class y of k (labels[i] is row i's
// true class), among its rows the fraction frac (0-1] with the largest
// predicted gap scores[hi][i] - scores[lo][i] (the rows a scheduler sends to
// hi first), the mean predicted gap against the mean of correct[hi][i] -
// correct[lo][i]. A model whose gap depends on the difficulty alone predicts
// alike for the hardest rows of every class, where one class may realise none
// of it.
func CheckGaps(scores [][]float64, correct [][]bool, labels []int, k, hi, lo int, frac float64) []ClassGap {
	byClass := make([][]int, k)
	for i, y := range labels {
		if y >= 0 && y < k {
			byClass[y] = append(byClass[y], i)
		}
	}
	gap := func(i int) float64 { return scores[hi][i] - scores[lo][i] }
	var out []ClassGap
	for y, idx := range byClass {
		if len(idx) == 0 {
			continue
		}
		slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(gap(b), gap(a)) }) // largest first
		n := max(1, int(math.Ceil(frac*float64(len(idx)))))
		idx = idx[:min(n, len(idx))]
		c := ClassGap{Class: y, N: len(idx)}
		var ss float64
		for _, i := range idx {
			r := 0.0
			if correct[hi][i] {
				r++
			}
			if correct[lo][i] {
				r--
			}
			c.Pred += gap(i)
			c.Real += r
			ss += r * r
		}
		nf := float64(c.N)
		c.Pred /= nf
		c.Real /= nf
		if c.N > 1 {
			c.SE = math.Sqrt(max(ss/nf-c.Real*c.Real, 0) / (nf - 1))
		}
		out = append(out, c)
	}
	return out
}

// GapMiss summarises CheckGaps: the row-weighted mean absolute difference
// between predicted and realised gaps, and the sum over classes of the squared
// difference in standard errors (each floored at what one disagreement among
// the class's rows would give, so a class realising no disagreement counts).
func GapMiss(gaps []ClassGap) (mae, chi2 float64) {
	n := 0
	for _, g := range gaps {
		d := g.Pred - g.Real
		mae += float64(g.N) * math.Abs(d)
		n += g.N
		se := max(g.SE, 1/float64(g.N))
		chi2 += d * d / (se * se)
	}
	if n > 0 {
		mae /= float64(n)
	}
	return mae, chi2
}
