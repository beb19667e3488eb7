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
		return nil, fmt.Errorf("%w: %s: %v", ErrParams, e.File, err)
	}
	if p.Classes != app.K() {
		return nil, fmt.Errorf("%w: %d classes, the app has %d", ErrParams, p.Classes, app.K())
	}
	return NewLogistic(e.Name, f, &p)
}

// NewLogistic returns a logistic estimator with parameters p over features f. It
// returns an error wrapping ErrParams when the parameter shapes disagree with each
// other or with f, a scale is not positive and finite, or a mean is NaN.
func NewLogistic(name string, f Features, p *LogisticParams) (*Logistic, error) {
	k, d := p.Classes, p.Dim
	if d != f.Dim() {
		return nil, fmt.Errorf("%w: dim %d, features %q give %d", ErrParams, d, f.Spec(), f.Dim())
	}
	if k < 2 || len(p.Mean) != d || len(p.Scale) != d || len(p.Weights) != k || len(p.Bias) != k {
		return nil, fmt.Errorf("%w: shapes: classes %d dim %d mean %d scale %d weights %d bias %d",
			ErrParams, k, d, len(p.Mean), len(p.Scale), len(p.Weights), len(p.Bias))
	}
	mean, inv, w, err := standardisedLinear("", p.Mean, p.Scale, p.Weights, d)
	if err != nil {
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
		if !(scale[i] > 0) || math.IsInf(scale[i], 0) || math.IsNaN(mean[i]) {
			return nil, nil, nil, fmt.Errorf("%w: %smean/scale[%d] = %v/%v", ErrParams, what, i, mean[i], scale[i])
		}
		m[i], inv[i] = float32(mean[i]), float32(1/scale[i])
	}
	for y, row := range weights {
		if len(row) != d {
			return nil, nil, nil, fmt.Errorf("%w: %sweights[%d] has %d values, want %d", ErrParams, what, y, len(row), d)
		}
		for _, v := range row {
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
	sum := 0.0
	for y := range dst {
		dst[y] = math.Exp(dst[y] - top)
		sum += dst[y]
	}
	for y := range dst {
		dst[y] /= sum
	}
}
