package sneakpeek

import (
	"encoding/json"
	"fmt"
	"math"
	"os"

	"github.com/sneakgate/sneakgate/manifest"
)

// LogisticParams is the JSON parameter file of a logistic estimator.
type LogisticParams struct {
	Classes int         `json:"classes"`
	Dim     int         `json:"dim"`
	Mean    []float64   `json:"mean"`
	Scale   []float64   `json:"scale"`
	Weights [][]float64 `json:"weights"`
	Bias    []float64   `json:"bias"`
}

// Logistic is a multinomial logistic regression on standardised features.
type Logistic struct {
	name string
	feat Features
	k, d int
	mean []float32
	inv  []float32 // 1/scale
	w    []float32 // k*d, row-major
	b    []float64
	buf  *scratch
}

func newLogistic(app *manifest.App, e manifest.Estimator, f Features) (Estimator, error) {
	raw, err := os.ReadFile(app.Path(e.File))
	if err != nil {
		return nil, err
	}
	var p LogisticParams
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrParams, err) // Load names the file
	}
	if p.Classes != app.K() {
		return nil, fmt.Errorf("%w: %d classes, the app has %d", ErrParams, p.Classes, app.K())
	}
	return NewLogistic(e.Name, f, &p)
}

// NewLogistic returns a logistic estimator with parameters p over features f. It
// returns an error wrapping ErrParams when the parameter shapes disagree with each
// other or with f, a scale is not positive and finite, or a mean, weight or
// bias is not finite.
func NewLogistic(name string, f Features, p *LogisticParams) (*Logistic, error) {
	k, d := p.Classes, p.Dim
	if d != f.Dim() {
		return nil, fmt.Errorf("%w: dim %d, want %d (features %q of an input of %d values)", ErrParams, d, f.Dim(), f.Spec(), f.InputSize())
	}
	if k < 2 || len(p.Mean) != d || len(p.Scale) != d || len(p.Weights) != k || len(p.Bias) != k {
		return nil, fmt.Errorf("%w: shapes: classes %d dim %d mean %d scale %d weights %d bias %d",
			ErrParams, k, d, len(p.Mean), len(p.Scale), len(p.Weights), len(p.Bias))
	}
	mean, inv, w, err := standardisedLinear("", p.Mean, p.Scale, p.Weights, d)
	if err != nil {
		return nil, err
	}
	if err := finiteBias("", p.Bias); err != nil {
		return nil, err
	}
	return &Logistic{name: name, feat: f, k: k, d: d, mean: mean, inv: inv, w: w,
		b: append([]float64(nil), p.Bias...), buf: newScratch(d)}, nil
}

// standardisedLinear checks and converts a linear model on standardised inputs
// ((x - mean) / scale, one weight row per output, each of d values) to the
// float32 form the estimators evaluate: mean, 1/scale and the rows end to end.
// what prefixes the names in its errors, which wrap ErrParams.
func standardisedLinear(what string, mean, scale []float64, weights [][]float64, d int) (m, inv, w []float32, err error) {
	m, inv, w = make([]float32, d), make([]float32, d), make([]float32, 0, len(weights)*d)
	for i := range d {
		m[i], inv[i] = float32(mean[i]), float32(1/scale[i])
		// Checked in float32, the form evaluated: a scale of 1e-39 is positive
		// and finite, but its inverse is not, and every estimate was NaN.
		if !(scale[i] > 0) || !finite32(m[i]) || !finite32(inv[i]) || inv[i] == 0 {
			return nil, nil, nil, fmt.Errorf("%w: %smean/scale[%d] = %v/%v (not finite or not positive in float32)", ErrParams, what, i, mean[i], scale[i])
		}
	}
	for y, row := range weights {
		if len(row) != d {
			return nil, nil, nil, fmt.Errorf("%w: %sweights[%d] has %d values, want %d", ErrParams, what, y, len(row), d)
		}
		for i, v := range row {
			if !finite32(float32(v)) {
				return nil, nil, nil, fmt.Errorf("%w: %sweights[%d][%d] = %v is not finite in float32", ErrParams, what, y, i, v)
			}
			w = append(w, float32(v))
		}
	}
	return m, inv, w, nil
}

// Name implements Estimator.
func (m *Logistic) Name() string { return m.name }

// Estimate implements Estimator.
func (m *Logistic) Estimate(input []float32, dst []float64) {
	b := m.buf.get()
	z := *b
	m.feat.Apply(input, z)
	for i := range z {
		z[i] = (z[i] - m.mean[i]) * m.inv[i]
	}
	top := math.Inf(-1)
	for y := 0; y < m.k; y++ {
		w := m.w[y*m.d : (y+1)*m.d]
		w = w[:len(z)]
		var s float32
		for i, v := range z {
			s += w[i] * v
		}
		dst[y] = float64(s) + m.b[y]
		top = max(top, dst[y])
	}
	m.buf.put(b)
	softmaxFrom(dst, top)
}

// softmaxFrom turns the logits in dst, whose largest is top, into their
// softmax. Logits that overflowed to +Inf (an input far outside the range the
// model was fitted on, in an application without input_range) share the mass
// rather than giving Inf-Inf = NaN; a NaN logit leaves a NaN distribution,
// which the gateway refuses (validDistribution).
func softmaxFrom(dst []float64, top float64) {
	if math.IsInf(top, 1) {
		for y, v := range dst {
			dst[y] = 0
			if math.IsInf(v, 1) {
				dst[y] = 1
			}
		}
	} else {
		for y := range dst {
			dst[y] = math.Exp(dst[y] - top)
		}
	}
	sum := 0.0
	for _, v := range dst {
		sum += v
	}
	for y := range dst {
		dst[y] /= sum
	}
}

// finiteBias refuses a NaN or infinite bias (JSON cannot spell one, but
// parameters built in memory can hold one), which would make every output NaN.
// what prefixes the name in its error, which wraps ErrParams.
func finiteBias(what string, bias []float64) error {
	for i, v := range bias {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%w: %sbias[%d] = %v is not finite", ErrParams, what, i, v)
		}
	}
	return nil
}

// finite32 reports whether v is neither NaN nor infinite.
func finite32(v float32) bool { return !math.IsNaN(float64(v)) && !math.IsInf(float64(v), 0) }
